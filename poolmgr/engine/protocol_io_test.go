package engine

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// redisInfo sends an inline command on a leased connection and returns
// the first line of its bulk reply (all of CLIENT INFO's).
func redisInfo(t *testing.T, c *Conn, cmd string) string {
	t.Helper()
	nc := c.NetConn()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = nc.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(nc, cmd+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	head, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		t.Fatalf("%s answered %q, %v", cmd, head, err)
	}
	body, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadString('\n'); err != nil && !errors.Is(err, io.EOF) { // the bulk's closing CRLF
		t.Fatal(err)
	}
	return body
}

// TestIORedisSetup checks a REDIS pool's connection setup against a real
// redis-server with a password: every connection the pool hands out is
// authenticated, in the pool's database and named, and a wrong password
// fails the dial with Redis's own words.
func TestIORedisSetup(t *testing.T) {
	addr := testkit.Redis(t, "--requirepass", "s3cret")
	p := newIOPool(t, ioConfig(addr, func(c *Config) {
		c.Protocol = ProtocolRedis
		c.Redis = RedisSetup{Password: "s3cret", Database: 3, ClientName: "pooled", ProtocolVersion: 2}
		c.Lifecycle.ValidateAfterIdle = time.Nanosecond // every checkout PINGs
	}), Env{})
	for range 3 {
		c, err := p.Acquire(context.Background(), "t")
		if err != nil {
			t.Fatal(err)
		}
		info := redisInfo(t, c, "CLIENT INFO")
		for _, want := range []string{" db=3 ", " name=pooled ", " user=default "} {
			if !strings.Contains(" "+info, want) {
				t.Fatalf("CLIENT INFO %q lacks %q", info, want)
			}
		}
		c.Release(true)
	}
	if st := p.Stats(); st.New != 1 || st.Reused != 2 {
		t.Fatalf("created %d, reused %d: want one connection, reused twice", st.New, st.Reused)
	}

	bad := newIOPool(t, ioConfig(addr, func(c *Config) {
		c.Protocol = ProtocolRedis
		c.Redis = RedisSetup{Password: "wrong", ProtocolVersion: 2}
		c.Limits.AcquireTimeout = 200 * time.Millisecond
	}), Env{})
	_, err := bad.Acquire(context.Background(), "t")
	var ae *AcquireError
	if !errors.As(err, &ae) || ae.LastDialErr == nil || !strings.Contains(ae.LastDialErr.Error(), "WRONGPASS") {
		t.Fatalf("Acquire with a wrong password = %v, want the dial's WRONGPASS", err)
	}
}

// TestIORedisCheckoutProbe checks that a REDIS pool with
// validate_after_idle PINGs a connection idle that long before handing it
// out, and closes one that does not answer.
func TestIORedisCheckoutProbe(t *testing.T) {
	pings := make(chan struct{}, 16)
	answer := make(chan bool, 16)
	u := startUpstream(t, "127.0.0.1:0", nil, func(nc net.Conn) {
		buf := make([]byte, len(redisPing))
		for {
			if _, err := io.ReadFull(nc, buf); err != nil {
				return
			}
			pings <- struct{}{}
			if !<-answer {
				return // hang up without a reply
			}
			if _, err := nc.Write(redisPong); err != nil {
				return
			}
		}
	})
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) {
		c.Protocol = ProtocolRedis
		c.Lifecycle.ValidateAfterIdle = time.Nanosecond
	}), Env{})
	c, err := p.Acquire(context.Background(), "t") // a new connection: no probe
	if err != nil {
		t.Fatal(err)
	}
	c.Release(true)
	answer <- true
	c, err = p.Acquire(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, pings)
	c.Release(true)
	answer <- false // the next probe gets no PONG: the connection is closed, a new one dialed
	c, err = p.Acquire(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, pings)
	if st := p.Stats(); st.Closes["unhealthy"] != 1 || st.New != 2 {
		t.Fatalf("closes %v, created %d; want one unhealthy close and a second connection", st.Closes, st.New)
	}
	c.Release(true)
}

// TestProtocolChangeBumpsGeneration: connections set up under one
// protocol or Redis setup are never handed out under another.
func TestProtocolChangeBumpsGeneration(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	cfg := ioConfig(u.addr(), nil)
	p := newIOPool(t, cfg, Env{})
	for i, change := range []func(*Config){
		func(c *Config) { c.Protocol, c.ResetTimeout = ProtocolHTTP1, time.Second },
		func(c *Config) { c.Protocol, c.Redis.ProtocolVersion = ProtocolRedis, 2 },
		func(c *Config) { c.Redis.Database = 4 },
		func(c *Config) { c.Redis.ClientName = "other" },
	} {
		change(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		before := p.Generation()
		if _, err := p.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
		if got := p.Generation(); got != before+1 {
			t.Fatalf("change %d: generation %d -> %d, want a bump", i, before, got)
		}
	}
	before := p.Generation()
	cfg.ResetTimeout = 2 * time.Second // applies to the next release: no bump
	if _, err := p.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if p.Generation() != before {
		t.Fatal("a reset_timeout change bumped the generation")
	}
}

// TestIOProtocolHealthCheck: on a protocol pool a TCP health check also
// runs the protocol's probe, so an upstream that accepts bytes but no
// longer answers (a hung Redis) fails it; on a RAW pool the peek alone
// passes.
func TestIOProtocolHealthCheck(t *testing.T) {
	answer := make(chan bool, 1)
	u := startUpstream(t, "127.0.0.1:0", nil, func(nc net.Conn) {
		buf := make([]byte, len(redisPing))
		for {
			if _, err := io.ReadFull(nc, buf); err != nil {
				return
			}
			if <-answer {
				_, _ = nc.Write(redisPong)
			}
		}
	})
	hc := HealthCheck{Kind: HealthTCP, Interval: time.Second, Timeout: 100 * time.Millisecond}
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) { c.Protocol = ProtocolRedis; c.HealthCheck = hc }), Env{})
	c := mustAcquire(t, p)
	defer c.Release(false)
	answer <- true
	if !p.probe(c, hc) {
		t.Fatal("a PONG failed the check")
	}
	answer <- false
	if p.probe(c, hc) {
		t.Fatal("no PONG passed the check")
	}
	raw := newIOPool(t, ioConfig(u.addr(), func(c *Config) { c.HealthCheck = hc }), Env{})
	rc := mustAcquire(t, raw)
	defer rc.Release(false)
	if !raw.probe(rc, hc) {
		t.Fatal("a RAW pool's TCP check failed an open connection")
	}
}
