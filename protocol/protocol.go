// Package protocol is what the pool knows of the protocols it carries: how
// a new connection is set up (the pool's own credentials and session
// settings), how an idle one is probed, and, for each lease, where the
// exchange stands (requests sent, replies completed, state a reset cannot
// clear) and how the connection is brought back to a clean state before the
// next lease. The engine runs Setup and Probe; the relay feeds a Session
// both directions of a lease and runs its Reset at release.
//
// Implementations live in the subpackages (redis, http1) and import
// nothing of the project: a Session follows the stream without copying
// it, and bounds what it buffers.
package protocol

import (
	"context"
	"errors"
	"net"
)

// Handler is one pool's protocol, built from its configuration. Safe for
// concurrent use.
type Handler interface {
	// Setup runs the pool's connection setup on a freshly dialed
	// connection (authentication, database, protocol version, name), within
	// ctx's deadline. It returns the connection to use from then on (nc, or
	// one layered on it, such as a TLS session the protocol negotiated)
	// and the connection's own state for its sessions (a PostgreSQL
	// backend's parameters and key), or nil. A connection whose setup
	// fails is not used.
	Setup(ctx context.Context, nc net.Conn) (net.Conn, any, error)
	// Probe checks an idle connection with the protocol's own request (a
	// Redis PING); the caller sets nc's deadline.
	Probe(nc net.Conn) error
	// NewSession starts following one lease on a connection whose Setup
	// returned state.
	NewSession(state any) Session
}

// State is where a lease's exchange stands.
type State int

const (
	// Idle means every request sent has its complete reply; the connection
	// stands at a message boundary.
	Idle State = iota
	// Outstanding means replies are still due; Reset reads and discards them.
	Outstanding
	// NotResettable means the connection holds state no reset clears (an
	// upgraded or close-delimited HTTP exchange, a replication stream, a
	// stream that broke the protocol). It must be closed.
	NotResettable
)

func (s State) String() string {
	switch s {
	case Idle:
		return "idle"
	case Outstanding:
		return "outstanding"
	case NotResettable:
		return "not_resettable"
	}
	return "State(?)"
}

// Session follows one lease's exchange at message level. Request and Reply
// are called with each chunk of the stream in order, Request from the
// goroutine writing to the upstream and Reply from the one reading it;
// State and Reset only once both have stopped, but for State on the
// goroutine of Reply once Request is called no more (the client
// half-closed: the relay delivers the replies due before the release). A
// Session never keeps the bytes it is given.
type Session interface {
	// Request follows client bytes about to be written to the upstream and
	// returns how many of them go: all, but for a message the pool answers
	// itself, after which the client sends nothing more (a PostgreSQL
	// Terminate ends the lease, not the connection).
	Request(b []byte) int
	// Reply follows upstream bytes about to be delivered to the client.
	Reply(b []byte)
	// State reports where the exchange stands.
	State() State
	// Reset brings the connection back to the state Setup left it in: it
	// reads and discards outstanding replies, then runs the protocol's
	// reset and the pool's setup again, checking every reply. The caller
	// sets nc's deadline (the pool's reset_timeout). An error means the
	// connection must be closed; errors.Is(err, ErrOutstanding) when
	// outstanding replies did not finish in time.
	Reset(nc net.Conn) error
}

// Drainer is a Session that says itself, on the goroutine of Reply once
// Request is called no more, whether replies are still to come to a client
// that half-closed; without it, they are while State is Outstanding. A
// PostgreSQL session has none to come for extended-protocol messages
// without their Sync, which the server holds until the Sync.
type Drainer interface {
	Drained() bool
}

// Cleaner is a Session that can tell, at release, that Reset has nothing
// to do: the connection is as its setup left it. The relay then returns
// it to the pool at once, as for a RAW pool, rather than handing it to
// the reset.
type Cleaner interface {
	Clean() bool
}

// Greeter is a Session that answers the client's opening itself before
// anything is relayed: a PostgreSQL startup, which the pool completed when
// it dialed. The relay hands it the client's first bytes, and the upstream
// connection (no reader runs until the opening is done).
type Greeter interface {
	Session
	// Greet takes client bytes b. It returns bytes to send to the client,
	// how many of b it took (the rest, once done, goes to the upstream),
	// and whether the opening is complete. An error refuses the client:
	// reply (an error message in the protocol) is sent, the client's
	// further bytes are dropped, and the connection is left as State says.
	Greet(nc net.Conn, b []byte) (reply []byte, took int, done bool, err error)
}

// Opener is a Handler that reads the start of a client's opening before
// a connection is leased for it, to answer a request that needs none: a
// PostgreSQL CancelRequest goes to its backend on a connection of its own,
// and would otherwise wait for a pooled connection, perhaps the one the
// query to cancel holds. Open returns the bytes it read, which go to the
// lease first, unless it answered the client itself (done); the caller
// sets nc's deadline and closes nc when done.
type Opener interface {
	Open(nc net.Conn) (read []byte, done bool, err error)
}

// Refusal says why a pool cannot lease a client a connection.
type Refusal int

const (
	// RefuseBusy means every connection is in use and the pool's waiters or
	// acquire timeout ran out (a PostgreSQL too_many_connections).
	RefuseBusy Refusal = iota
	// RefuseUnavailable means the pool is draining, gone, or cannot reach its
	// upstream.
	RefuseUnavailable
	// RefuseDenied means the client may not lease the pool.
	RefuseDenied
)

// Refuser is a Handler that can tell a client, in its protocol, that it
// gets no connection, before any is leased: a local listener's client
// that the pool turned away. Refuse reads as much of the client's opening
// as the protocol needs before an error (a PostgreSQL startup) and writes
// the error; the caller sets nc's deadline and closes it.
type Refuser interface {
	Refuse(nc net.Conn, why Refusal, msg string) error
}

type endpointHostKey struct{}

// WithEndpointHost returns ctx carrying the host of the endpoint a
// connection was dialed for (a DNS name, where the dial went to one of its
// addresses): the name a Setup that negotiates TLS verifies.
func WithEndpointHost(ctx context.Context, host string) context.Context {
	return context.WithValue(ctx, endpointHostKey{}, host)
}

// EndpointHost is the host WithEndpointHost put in ctx, or "".
func EndpointHost(ctx context.Context) string {
	h, _ := ctx.Value(endpointHostKey{}).(string)
	return h
}

// ErrOutstanding is wrapped by a Reset that failed while replies the
// client left behind were still due.
var ErrOutstanding = errors.New("protocol: outstanding replies did not finish")
