package poolmgr

// This file declares the engine's API; the bodies are being filled in.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

var errNotYet = errors.New("poolmgr: engine not implemented yet")

// State is a pool's lifecycle state.
type State int

const (
	StateActive State = iota
	StatePaused
	StateDraining
)

func (s State) String() string {
	switch s {
	case StateActive:
		return "ACTIVE"
	case StatePaused:
		return "PAUSED"
	case StateDraining:
		return "DRAINING"
	}
	return "State(?)"
}

// DialFunc dials one resolved address ("ip:port"). It is the process boundary
// tests fake.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Resolver resolves endpoint host names; *net.Resolver satisfies it.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Env is what a pool takes from its owner besides its Config.
type Env struct {
	Now      func() time.Time // default time.Now
	Dial     DialFunc         // default net.Dialer with the pool's keepalive
	Resolver Resolver         // default net.DefaultResolver
	Logger   *slog.Logger     // default slog.Default()
}

// Pool is one named pool of upstream connections. All methods are safe for
// concurrent use.
type Pool struct {
	name string
}

// NewPool starts a pool (its maintenance loop and min_idle prewarm). cfg must
// have passed WithDefaults and Validate.
func NewPool(name string, cfg Config, env Env) (*Pool, error) { return nil, errNotYet }

// Name returns the pool's ID.
func (p *Pool) Name() string { return p.name }

// Acquire leases a connection. holder names the caller (for ListLeases).
func (p *Pool) Acquire(ctx context.Context, holder string) (*Conn, error) { return nil, errNotYet }

// Retired counts connections a change retires.
type Retired struct{ Idle, Leased int }

// Plan reports what Reconfigure(cfg) would retire, without changing anything.
func (p *Pool) Plan(cfg Config) Retired { return Retired{} }

// Reconfigure applies cfg live; endpoint or TLS changes bump the generation.
func (p *Pool) Reconfigure(cfg Config) (Retired, error) { return Retired{}, errNotYet }

// Config returns the pool's current configuration.
func (p *Pool) Config() Config { return Config{} }

// State returns the lifecycle state.
func (p *Pool) State() State { return StateActive }

// Generation returns the current generation.
func (p *Pool) Generation() uint64 { return 0 }

// Drain stops new leases, closes idle connections; leases finish normally.
func (p *Pool) Drain() {}

// Pause makes new acquires wait until Resume.
func (p *Pool) Pause() {}

// Resume ends Pause or Drain.
func (p *Pool) Resume() {}

// Reconnect bumps the generation and returns the new one.
func (p *Pool) Reconnect() uint64 { return 0 }

// WaitGeneration waits until no connection of a generation below gen remains.
func (p *Pool) WaitGeneration(ctx context.Context, gen uint64) error { return errNotYet }

// WaitDrained waits until no connection is leased.
func (p *Pool) WaitDrained(ctx context.Context) error { return errNotYet }

// Close closes the pool: waiters fail with ErrPoolClosed, idle connections
// close, leased ones close on release. It waits for background goroutines.
// Idempotent.
func (p *Pool) Close() error { return nil }

// Leases lists the active leases.
func (p *Pool) Leases() []LeaseInfo { return nil }

// Revoke ends a lease by closing its connection.
func (p *Pool) Revoke(leaseID string) error { return ErrLeaseNotFound }

// Serving reports whether the pool can hand out connections now (active and
// circuit closed).
func (p *Pool) Serving() bool { return false }

// Stats returns a snapshot.
func (p *Pool) Stats() Stats { return Stats{} }

// LeaseInfo describes an active lease.
type LeaseInfo struct {
	ID           string
	Pool         string
	Holder       string
	Since        time.Time
	UpstreamAddr string
	Generation   uint64
}

// AcquireInfo describes how an acquire was served (like net/http's GotConnInfo).
type AcquireInfo struct {
	LeaseID      string
	Reused       bool
	IdleTime     time.Duration
	ConnAge      time.Duration
	WaitTime     time.Duration
	UpstreamAddr string
	Generation   uint64
}

// Conn is a leased connection.
type Conn struct{}

// NetConn returns the upstream connection.
func (c *Conn) NetConn() net.Conn { return nil }

// Info describes the acquire.
func (c *Conn) Info() AcquireInfo { return AcquireInfo{} }

// Done is closed when the lease is revoked.
func (c *Conn) Done() <-chan struct{} { return nil }

// AddBytes counts relayed bytes for stats.
func (c *Conn) AddBytes(in, out int64) {}

// Release ends the lease.
func (c *Conn) Release(reusable bool) {}

// CloseReason says why a connection was closed.
type CloseReason int

// Histogram has explicit bucket bounds.
type Histogram struct {
	Bounds []time.Duration // upper bounds; the last bucket is +Inf
	Counts []uint64        // len(Bounds)+1
	Sum    time.Duration
	Count  uint64
}

// Stats is a value snapshot of a pool.
type Stats struct {
	Pool                                     string
	State                                    State
	Generation                               uint64
	Max, Total, InUse, Idle, Dialing, Waiters int
	MinIdle                                  int
	CircuitOpen                              bool
	LastDialError                            string

	Acquires, Reused, New, Waits, Timeouts, BacklogRejections uint64
	Dials, DialFailures                                       uint64
	Closes                                                    map[string]uint64 // by CloseReason.String()
	BytesIn, BytesOut                                         uint64
	WaitTime, DialTime, HoldTime                              Histogram
}
