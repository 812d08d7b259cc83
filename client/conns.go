package client

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// A server bounds the streams open at once on one HTTP/2 connection
// (SETTINGS_MAX_CONCURRENT_STREAMS; poold's --max-concurrent-streams), and
// each lease holds a stream. grpc-go does not tell its caller the bound: a
// new stream past it waits inside the transport for one to end, which for
// held leases may be never. So the Client keeps count itself. It opens its
// connections as they are needed, like Envoy's HTTP/2 connection pool: a
// Lease stream goes on the connection with the fewest streams that has
// room, and when every connection is full the Client dials another. poold
// advertises its bound in the header of each Lease stream
// (leasewire.MaxStreamsKey); until a server has, the Client assumes
// DefaultMaxStreamsPerConn, the least RFC 9113 (section 6.5.2) asks a
// server to allow. Against a server that allows fewer and does not say so,
// a new stream that waits on a ready connection for stallWait marks the
// connection full, and the lease goes on another. With several replicas a
// connection holds a transport to each, and the count is of all its
// streams: it errs towards more connections, never towards a wait.

const (
	// DefaultMaxStreamsPerConn is the Lease streams a connection takes
	// until the server has advertised its limit.
	DefaultMaxStreamsPerConn = 100
	// streamReserve is how many of a connection's streams the Client
	// leaves to other calls (health checks of the replicas, WatchStats,
	// unary calls), taken off the server's limit (at most a quarter of it).
	streamReserve = 8
	// defaultStallWait is how long a new stream may wait on a ready
	// connection before the Client takes it to be at the server's limit.
	defaultStallWait = 2 * time.Second
)

// channel is one gRPC ClientConn of a Client, with its own balancer and
// replica set.
type channel struct {
	cc       *grpc.ClientConn
	leases   poolv1.LeaseServiceClient
	replicas *replicaSet
	setID    uint64

	// Under the Client's mu:
	streams int // Lease streams open or being opened on it
	full    int // > 0: a new stream stalled past this many; take no more
}

// newChannel makes a ClientConn to target with the Client's dial options
// (dial) and the caller's (user, applied last). It does not connect.
func newChannel(target string, dial, user []grpc.DialOption) (*channel, error) {
	target, extra, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	replicas, id := newReplicaSet()
	opts := append(dial[:len(dial):len(dial)], extra...)
	opts = append(opts, grpc.WithDefaultServiceConfig(serviceConfig(id)))
	opts = append(opts, user...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		dropReplicaSet(id)
		return nil, fmt.Errorf("client: %w", err)
	}
	return &channel{cc: cc, leases: poolv1.NewLeaseServiceClient(cc), replicas: replicas, setID: id}, nil
}

func (ch *channel) close() error {
	err := ch.cc.Close()
	dropReplicaSet(ch.setID)
	return err
}

// ready reports whether the connection is up, so that a stream waiting on
// it waits for stream quota, not for the connection.
func (ch *channel) ready() bool { return ch.cc.GetState() == connectivity.Ready }

// streamLimitLocked returns how many Lease streams one connection takes.
func (c *Client) streamLimitLocked() int {
	n := DefaultMaxStreamsPerConn
	if c.serverStreams > 0 {
		n = c.serverStreams - min(streamReserve, c.serverStreams/4)
	}
	if c.userStreams > 0 {
		n = min(n, c.userStreams)
	}
	return max(n, 1)
}

// reserveStream counts a new Lease stream on the connection with the
// fewest streams that has room, dialling another when none has.
func (c *Client) reserveStream() (*channel, error) {
	ch, dialled, limit, err := c.reserveStreamLocked()
	if dialled {
		c.debug("poolplane: new gRPC connection: every connection is at its stream limit", "conns", c.conns(), "limit", limit)
	}
	return ch, err
}

func (c *Client) reserveStreamLocked() (_ *channel, dialled bool, limit int, _ error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, 0, ErrClientClosed
	}
	limit = c.streamLimitLocked()
	var best *channel
	for _, ch := range c.chans {
		room := ch.streams < limit && (ch.full == 0 || ch.streams < ch.full)

		if room && (best == nil || ch.streams < best.streams) {
			best = ch
		}
	}
	if best == nil {
		// grpc.NewClient does no I/O: the connection is dialled by the
		// stream about to be opened on it.
		ch, err := c.dialConn()
		if err != nil {
			return nil, false, limit, err
		}
		c.chans = append(c.chans, ch)
		best = ch
		dialled = true
	}
	best.streams++
	return best, dialled, limit, nil
}

// releaseStream uncounts a Lease stream that ended (or never opened).
func (c *Client) releaseStream(ch *channel) {
	c.mu.Lock()
	ch.streams--
	c.mu.Unlock()
}

// stalled caps ch at the streams it holds besides the one that waited on
// it, and uncounts that one.
func (c *Client) stalled(ch *channel) {
	c.mu.Lock()
	ch.streams--
	if ch.streams > 0 {
		ch.full = ch.streams
	}
	full := ch.full
	c.mu.Unlock()
	c.debug("poolplane: a new stream waited on a ready connection: taking it as full", "streams", full)
}

// learnStreamLimit records the server's stream limit from a Lease
// stream's header. Called by a stream's receive goroutine.
func (c *Client) learnStreamLimit(v []string) {
	// One value, in decimal (leasewire.MaxStreamsKey).
	if len(v) != 1 {
		return
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n <= 0 {
		return
	}
	c.mu.Lock()
	c.serverStreams = n
	c.mu.Unlock()
}

// conns returns the number of connections (for tests).
func (c *Client) conns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.chans)
}
