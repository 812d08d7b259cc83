package engine

import (
	"strconv"
	"time"
)

// CloseReason says why the pool closed a connection. Stats.Closes counts
// closes by CloseReason.String().
type CloseReason int

// Close reasons.
const (
	// CloseIdleTimeout: idle longer than lifecycle.idle_timeout.
	CloseIdleTimeout CloseReason = iota
	// CloseMaxLifetime: older than lifecycle.max_lifetime (minus its jitter).
	CloseMaxLifetime
	// CloseUnhealthy: a checkout peek or a health check found it dead or
	// holding stray bytes.
	CloseUnhealthy
	// CloseGeneration: retired by an endpoint/TLS change or Reconnect.
	CloseGeneration
	// CloseShrink: above max_connections or max_idle after a release or a
	// reconfiguration.
	CloseShrink
	// CloseDirty: released as not reusable, or with unread upstream bytes.
	CloseDirty
	// CloseRevoked: its lease was revoked (RevokeLease).
	CloseRevoked
	// CloseDrain: the pool is draining.
	CloseDrain
	// CloseClosed: the pool was closed.
	CloseClosed
	// CloseDNS: its address no longer resolves from the endpoint.
	CloseDNS
	// CloseSingleUse: the pool's reuse policy is SINGLE_USE.
	CloseSingleUse
	// CloseError: an I/O error while the pool handled it (for example a TLS
	// read during validation).
	CloseError
	// CloseMaxLeaseDuration: its lease was held past
	// lifecycle.max_lease_duration.
	CloseMaxLeaseDuration
	// CloseOutstanding: a protocol pool's connection whose client left
	// replies outstanding that did not finish within reset_timeout.
	CloseOutstanding
	// CloseResetFailed: a protocol pool's reset (or the setup after it)
	// failed or did not answer within reset_timeout.
	CloseResetFailed
	// CloseNotResettable: the client left state no reset clears (an
	// unfinished request, an upgrade, a replication stream, a protocol
	// error).
	CloseNotResettable

	numCloseReasons
)

var closeReasonNames = [numCloseReasons]string{
	CloseIdleTimeout: "idle_timeout",
	CloseMaxLifetime: "max_lifetime",
	CloseUnhealthy:   "unhealthy",
	CloseGeneration:  "generation",
	CloseShrink:      "shrink",
	CloseDirty:       "dirty",
	CloseRevoked:     "revoked",
	CloseDrain:       "drain",
	CloseClosed:      "closed",
	CloseDNS:         "dns",
	CloseSingleUse:   "single_use",
	CloseError:       "error",

	CloseMaxLeaseDuration: "max_lease_duration",
	CloseOutstanding:      "outstanding_reply",
	CloseResetFailed:      "reset_failed",
	CloseNotResettable:    "not_resettable",
}

// CloseReasons returns the name of every CloseReason, in order: the keys
// Stats.Closes may hold.
func CloseReasons() []string {
	return append([]string(nil), closeReasonNames[:]...)
}

// String returns the snake_case name used as the key of Stats.Closes.
func (r CloseReason) String() string {
	if r >= 0 && r < numCloseReasons {
		return closeReasonNames[r]
	}
	return "CloseReason(" + strconv.Itoa(int(r)) + ")"
}

// HistogramBounds are the upper bounds of the WaitTime, DialTime and
// HoldTime buckets: 100µs to 10s in a 1-2-5 series. The last bucket of a
// Histogram (beyond 10s) is +Inf.
var histogramBounds = [...]time.Duration{
	100 * time.Microsecond, 200 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
}

// HistogramBounds returns a copy of the bucket upper bounds used by every
// Histogram in Stats.
func HistogramBounds() []time.Duration {
	return append([]time.Duration(nil), histogramBounds[:]...)
}

// histogram is the allocation-free live form of a Histogram, guarded by the
// pool's mutex.
type histogram struct {
	counts [len(histogramBounds) + 1]uint64
	sum    time.Duration
	count  uint64
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(histogramBounds) && d > histogramBounds[i] {
		i++
	}
	h.counts[i]++
	h.sum += d
	h.count++
}

func (h *histogram) snapshot() Histogram {
	return Histogram{
		Bounds: HistogramBounds(),
		Counts: append([]uint64(nil), h.counts[:]...),
		Sum:    h.sum,
		Count:  h.count,
	}
}

// counters are the cumulative counters of a pool, guarded by its mutex.
type counters struct {
	// reused and created count acquires by the connection that served
	// them (one that served a lease before, or its first lease); opened
	// counts connections, that is successful dials.
	acquires, reused, created, waits, timeouts, backlogRejections uint64
	dials, dialFailures, opened                                   uint64
	healthOK, healthFailed                                        uint64
	closes                                                        [numCloseReasons]uint64
	waitTime, dialTime, holdTime                                  histogram
	// endpoints holds the dial counters of each configured endpoint, and
	// of no other: setEndpointsLocked keeps it to cfg.Endpoints, so its
	// size is bounded by the configuration, whatever names resolve to.
	endpoints map[string]*endpointCounters
}

// endpointCounters are the dial counters of one configured endpoint.
type endpointCounters struct {
	dials, dialFailures, opened uint64
}

// endpointLocked returns the counters of the configured endpoint ep. A
// dial of an endpoint removed while it ran counts in a throwaway.
func (p *Pool) endpointLocked(ep string) *endpointCounters {
	if ec := p.st.endpoints[ep]; ec != nil {
		return ec
	}
	return new(endpointCounters)
}

// keepEndpointsLocked keeps the counters of the endpoints in cfg.Endpoints
// (new ones start at zero) and forgets the others.
func (p *Pool) keepEndpointsLocked() {
	m := make(map[string]*endpointCounters, len(p.cfg.Endpoints))
	for _, ep := range p.cfg.Endpoints {
		ec := p.st.endpoints[ep]
		if ec == nil {
			ec = new(endpointCounters)
		}
		m[ep] = ec
	}
	p.st.endpoints = m
}

// oldestWaitLocked is how long the longest-queued waiter has waited, 0
// with none queued.
func (p *Pool) oldestWaitLocked(now time.Time) time.Duration {
	var oldest time.Time
	for e := p.waiters.Front(); e != nil; e = e.Next() {
		if s := e.Value.start; oldest.IsZero() || s.Before(oldest) {
			oldest = s
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(now.Sub(oldest), 0)
}

// Stats returns a value snapshot taken under the pool's lock.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{
		Pool:              p.name,
		State:             p.state,
		Generation:        p.gen,
		Fenced:            p.fenced,
		Protocol:          p.cfg.Protocol,
		Max:               p.maxLocked(),
		Total:             p.total,
		InUse:             len(p.leased),
		Idle:              p.idleLocked(),
		Dialing:           p.dialing,
		Waiters:           p.waiters.Len(),
		MinIdle:           p.cfg.Limits.MinIdle,
		CircuitOpen:       p.circuitOpen,
		Acquires:          p.st.acquires,
		Reused:            p.st.reused,
		New:               p.st.created,
		Waits:             p.st.waits,
		Timeouts:          p.st.timeouts,
		BacklogRejections: p.st.backlogRejections,
		Dials:             p.st.dials,
		DialFailures:      p.st.dialFailures,
		Opened:            p.st.opened,
		HealthChecks:      p.st.healthOK + p.st.healthFailed,
		HealthFailures:    p.st.healthFailed,
		OldestWait:        p.oldestWaitLocked(p.env.Now()),
		Endpoints:         make([]EndpointStats, 0, len(p.cfg.Endpoints)),
		Closes:            make(map[string]uint64),
		WaitTime:          p.st.waitTime.snapshot(),
		DialTime:          p.st.dialTime.snapshot(),
		HoldTime:          p.st.holdTime.snapshot(),
	}
	if p.lastDialErr != nil {
		s.LastDialError = p.lastDialErr.Error()
	}
	for _, ep := range p.cfg.Endpoints {
		if ec := p.st.endpoints[ep]; ec != nil {
			s.Endpoints = append(s.Endpoints, EndpointStats{Endpoint: ep, Dials: ec.dials, DialFailures: ec.dialFailures, Opened: ec.opened})
		}
	}
	for r, n := range p.st.closes {
		if n > 0 {
			s.Closes[CloseReason(r).String()] = n
		}
	}
	p.mu.Unlock()
	s.BytesIn = p.bytesIn.Load()
	s.BytesOut = p.bytesOut.Load()
	return s
}

// EndpointStats are the dial counters of one configured endpoint (a
// "host:port" of Config.Endpoints, whatever it resolves to).
type EndpointStats struct {
	Endpoint            string
	Dials, DialFailures uint64
	// Opened counts the dials that opened a connection.
	Opened uint64
}

// LeaseInfo describes an active lease.
type LeaseInfo struct {
	ID           string    // unique: "<pool>-<instance>-<n>"
	Pool         string    // the pool's ID
	Holder       string    // as given to Acquire
	Since        time.Time // when the lease was granted
	UpstreamAddr string    // the resolved "ip:port" dialed
	Generation   uint64    // the connection's generation
}

// AcquireInfo describes how an acquire was served (like net/http's GotConnInfo).
type AcquireInfo struct {
	LeaseID      string        // as in LeaseInfo.ID
	Reused       bool          // the connection served an earlier lease
	IdleTime     time.Duration // how long it was idle before this lease
	ConnAge      time.Duration // how long it had been open at the acquire
	WaitTime     time.Duration // how long Acquire took
	UpstreamAddr string        // the resolved "ip:port" dialed
	Generation   uint64        // the connection's generation
	Protocol     Protocol      // the pool's protocol when the connection was set up
}

// Histogram has explicit bucket bounds.
type Histogram struct {
	Bounds []time.Duration // upper bounds; the last bucket is +Inf
	Counts []uint64        // len(Bounds)+1
	Sum    time.Duration
	Count  uint64
}
