package engine

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzConfigValidate builds a Config from arbitrary fields and checks that
// WithDefaults and Validate never panic, that WithDefaults is idempotent,
// that a failure is a *ValidationError (ErrInvalidConfig) listing sorted,
// named violations.
func FuzzConfigValidate(f *testing.F) {
	f.Add("127.0.0.1:6379", 10, 0, 0, 1024, int64(time.Second), int64(5*time.Second), int64(30*time.Minute), int64(0), int64(5*time.Minute), int64(0), 0, int64(0), int64(30*time.Second), 0, 0, "", "k=v")
	f.Add("a:1,a:1", 0, -1, 5, -1, int64(-1), int64(0), int64(time.Millisecond), int64(time.Hour), int64(0), int64(-5), 7, int64(50*time.Millisecond), int64(0), 2, 9, "x", "")
	f.Add("host.example:65536,:80,[::1]:443", 100001, 3, 2, 2000000, int64(2*time.Hour), int64(10*time.Minute), int64(800*time.Hour), int64(time.Hour), int64(time.Second), int64(time.Hour), 3, int64(time.Second), int64(48*time.Hour), 1, 1, "/health", strings.Repeat("l=", 70))
	f.Add("", 1, 1, 1, 0, int64(1), int64(1), int64(time.Second), int64(0), int64(time.Second), int64(0), 4, int64(100*time.Millisecond), int64(time.Second), 0, 0, "nopath", "=empty")
	f.Fuzz(func(t *testing.T, endpoints string, maxConns, minIdle, maxIdle, maxWaiters int,
		acquire, dial, lifetime, jitter, idle, validate int64, kind int, interval, dns int64,
		reuse, order int, path, labels string) {
		cfg := Config{
			Limits: Limits{MaxConnections: maxConns, MinIdle: minIdle, MaxIdle: maxIdle, MaxWaiters: maxWaiters,
				AcquireTimeout: time.Duration(acquire), DialTimeout: time.Duration(dial)},
			Lifecycle: Lifecycle{MaxLifetime: time.Duration(lifetime), LifetimeJitter: time.Duration(jitter),
				IdleTimeout: time.Duration(idle), ValidateAfterIdle: time.Duration(validate)},
			HealthCheck: HealthCheck{Kind: HealthCheckKind(kind), Interval: time.Duration(interval), HTTPPath: path},
			DNSRefresh:  time.Duration(dns),
			Reuse:       ReusePolicy(reuse),
			IdleOrder:   IdleOrder(order),
		}
		if endpoints != "" {
			cfg.Endpoints = strings.Split(endpoints, ",")
		}
		if labels != "" {
			cfg.Labels = map[string]string{}
			for kv := range strings.SplitSeq(labels, ";") {
				k, v, _ := strings.Cut(kv, "=")
				cfg.Labels[k] = v
			}
		}
		d := cfg.WithDefaults()
		if !d.WithDefaults().Equal(d) {
			t.Fatalf("WithDefaults is not idempotent: %v", d.WithDefaults().DiffFields(d))
		}
		if len(d.DiffFields(d)) != 0 {
			t.Fatalf("a config differs from itself: %v", d.DiffFields(d))
		}
		err := d.Validate()
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalidConfig) || len(ve.Violations) == 0 {
				t.Fatalf("Validate: %v (%T), want a *ValidationError with violations", err, err)
			}
			if !slices.IsSortedFunc(ve.Violations, func(a, b FieldViolation) int { return strings.Compare(a.Field, b.Field) }) {
				t.Fatalf("violations not sorted by field: %v", ve.Violations)
			}
			for _, v := range ve.Violations {
				if v.Field == "" || v.Reason == "" {
					t.Fatalf("violation without field or reason: %+v", v)
				}
			}
			return
		}
		// A valid config stays valid through defaults and cloning.
		if err := cloneConfig(d).WithDefaults().Validate(); err != nil {
			t.Fatalf("a valid config no longer validates once cloned: %v", err)
		}
	})
}

// FuzzValidPoolID checks validPoolID against the pattern it implements,
// ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$.
func FuzzValidPoolID(f *testing.F) {
	re := regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	for _, s := range []string{"", "a", "a-", "-a", "a-b", "ab9", "9a", "A", "a_b", "é", "a\n",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 61) + "b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := validPoolID(id), re.MatchString(id); got != want {
			t.Fatalf("validPoolID(%q) = %v, the pattern says %v", id, got, want)
		}
	})
}
