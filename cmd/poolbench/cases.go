package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/poolplane/poolplane/client"
)

// benchCase is one way of making requests to the upstream.
type benchCase struct {
	name  string // "group/variant"
	group string // "tcp", "tls" or "bulk": which floor and no-pool baseline it pairs with
	proxy string // "poold", "haproxy" or "" (direct)
	desc  string
	// newWorker prepares one client of a request/response case: anything
	// it does (dialing a persistent connection, taking a long lease) is
	// outside the measurement. deadline bounds the worker's I/O.
	newWorker func(b *bench, deadline time.Time) (rrWorker, error)
	// dialBulk opens the connection of a bulk case.
	dialBulk func(b *bench, deadline time.Time) (net.Conn, error)
}

func (c *benchCase) bulk() bool { return c.dialBulk != nil }

// Case names.
const (
	caseTCPNewConn  = "tcp/new-conn"
	caseTLSNewConn  = "tls/new-conn"
	caseTCPDirect   = "tcp/direct"
	caseTLSDirect   = "tls/direct"
	caseTCPLeaseReq = "tcp/lease-per-req"
	caseTLSLeaseReq = "tls/lease-per-req"
	caseTCPLeaseHld = "tcp/lease-held"
	caseTLSLeaseHld = "tls/lease-held"
	caseTCPHAProxy  = "tcp/haproxy"
	caseBulkDirect  = "bulk/direct"
	caseBulkLease   = "bulk/lease"
	caseBulkHAProxy = "bulk/haproxy"
)

// benchCases returns every case, in report order.
func benchCases() []*benchCase {
	return []*benchCase{
		{name: caseTCPNewConn, group: "tcp", desc: "new TCP connection per request (no pooling)",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) {
				d := &net.Dialer{Deadline: dl}
				return &dialWorker{deadline: dl, dial: func() (net.Conn, error) { return d.Dial("tcp", b.up.tcpAddr) }}, nil
			}},
		{name: caseTLSNewConn, group: "tls", desc: "new TLS 1.3 connection per request, full handshake (no pooling)",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) {
				d := &tls.Dialer{NetDialer: &net.Dialer{Deadline: dl}, Config: b.tlsConf}
				return &dialWorker{deadline: dl, dial: func() (net.Conn, error) {
					return d.DialContext(context.Background(), "tcp", b.up.tlsAddr)
				}}, nil
			}},
		{name: caseTCPDirect, group: "tcp", desc: "one persistent TCP connection per client (the floor)",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) {
				return dialPersistent(dl, func() (net.Conn, error) { return net.DialTimeout("tcp", b.up.tcpAddr, b.cfg.timeout) })
			}},
		{name: caseTLSDirect, group: "tls", desc: "one persistent TLS connection per client (the TLS floor)",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) {
				return dialPersistent(dl, func() (net.Conn, error) {
					return tls.DialWithDialer(&net.Dialer{Timeout: b.cfg.timeout}, "tcp", b.up.tlsAddr, b.tlsConf)
				})
			}},
		{name: caseTCPLeaseReq, group: "tcp", proxy: "poold", desc: "poolplane: one lease per request (0-RTT LeaseWith, read, Close) on a warm pool",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) { return b.leaseWorker(benchPoolTCP, dl), nil }},
		{name: caseTLSLeaseReq, group: "tls", proxy: "poold", desc: "poolplane: one lease per request on a warm pool of TLS connections",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) { return b.leaseWorker(benchPoolTLS, dl), nil }},
		{name: caseTCPLeaseHld, group: "tcp", proxy: "poold", desc: "poolplane: one long-held lease per client (round trips only)",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) { return b.heldLease(benchPoolTCP, dl) }},
		{name: caseTLSLeaseHld, group: "tls", proxy: "poold", desc: "poolplane: one long-held lease per client on the TLS pool",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) { return b.heldLease(benchPoolTLS, dl) }},
		{name: caseTCPHAProxy, group: "tcp", proxy: "haproxy", desc: "HAProxy (TCP mode): one persistent connection per client",
			newWorker: func(b *bench, dl time.Time) (rrWorker, error) {
				return dialPersistent(dl, func() (net.Conn, error) { return net.DialTimeout("tcp", b.hap.addr, b.cfg.timeout) })
			}},
		{name: caseBulkDirect, group: "bulk", desc: "bulk echo over one direct TCP connection",
			dialBulk: func(b *bench, _ time.Time) (net.Conn, error) {
				return net.DialTimeout("tcp", b.up.tcpAddr, b.cfg.timeout)
			}},
		{name: caseBulkLease, group: "bulk", proxy: "poold", desc: "bulk echo through one poolplane lease",
			dialBulk: func(b *bench, dl time.Time) (net.Conn, error) {
				ctx, cancel := context.WithDeadline(context.Background(), dl)
				defer cancel()
				return b.sdk.Lease(ctx, benchPoolTCP)
			}},
		{name: caseBulkHAProxy, group: "bulk", proxy: "haproxy", desc: "bulk echo through HAProxy (TCP mode)",
			dialBulk: func(b *bench, _ time.Time) (net.Conn, error) {
				return net.DialTimeout("tcp", b.hap.addr, b.cfg.timeout)
			}},
	}
}

// floorOf and noPoolOf name the references a group's cases pair with.
var (
	floorOf  = map[string]string{"tcp": caseTCPDirect, "tls": caseTLSDirect, "bulk": caseBulkDirect}
	noPoolOf = map[string]string{"tcp": caseTCPNewConn, "tls": caseTLSNewConn}
)

// rrWorker is one client of a request/response case.
type rrWorker interface {
	// roundTrip sends req and reads len(resp) bytes back.
	roundTrip(req, resp []byte) error
	// persistent reports whether the worker makes every request on one
	// connection, which an error leaves unusable.
	persistent() bool
	// close ends the worker; abort (from another goroutine) unblocks it.
	close()
	abort()
}

// dialWorker opens a new connection for every request.
type dialWorker struct {
	dial     func() (net.Conn, error)
	deadline time.Time

	mu   sync.Mutex // protects cur and done
	cur  net.Conn
	done bool // aborted: no new connection
}

func (w *dialWorker) roundTrip(req, resp []byte) error {
	c, err := w.dial()
	if err != nil {
		return err
	}
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		_ = c.Close()
		return net.ErrClosed
	}
	w.cur = c
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.cur = nil
		w.mu.Unlock()
	}()
	if err := c.SetDeadline(w.deadline); err != nil {
		_ = c.Close()
		return err
	}
	if err := echoRoundTrip(c, req, resp); err != nil {
		_ = c.Close()
		return err
	}
	return c.Close()
}

func (w *dialWorker) persistent() bool { return false }
func (w *dialWorker) close()           {}

func (w *dialWorker) abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	if w.cur != nil {
		_ = w.cur.Close()
	}
}

// connWorker makes every request on one connection.
type connWorker struct{ c net.Conn }

func dialPersistent(deadline time.Time, dial func() (net.Conn, error)) (rrWorker, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(deadline); err != nil {
		_ = c.Close()
		return nil, err
	}
	return &connWorker{c: c}, nil
}

func (w *connWorker) roundTrip(req, resp []byte) error { return echoRoundTrip(w.c, req, resp) }
func (w *connWorker) persistent() bool                 { return true }
func (w *connWorker) close()                           { _ = w.c.Close() }
func (w *connWorker) abort()                           { _ = w.c.Close() }

// leaseWorker takes one lease per request.
type leaseWorker struct {
	b    *bench
	pool string
	ctx  context.Context // bounds each lease's wait: the cell's deadline
	stop context.CancelFunc
}

func (b *bench) leaseWorker(pool string, deadline time.Time) rrWorker {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	return &leaseWorker{b: b, pool: pool, ctx: ctx, stop: cancel}
}

// readEcho reads c's echo of req into resp, discarding c on an error or
// when the echo differs (errMismatch).
func readEcho(c *client.Conn, req, resp []byte) error {
	if _, err := io.ReadFull(c, resp); err != nil {
		_ = c.Discard()
		return err
	}
	if !bytes.Equal(req, resp) {
		_ = c.Discard()
		return errMismatch
	}
	return nil
}

func (w *leaseWorker) roundTrip(req, resp []byte) error {
	c, err := w.b.sdk.LeaseWith(w.ctx, w.pool, req)
	if err != nil {
		return err
	}
	if err := readEcho(c, req, resp); err != nil {
		return err
	}
	return c.Close()
}

func (w *leaseWorker) persistent() bool { return false }
func (w *leaseWorker) close()           { w.stop() }

// abort closes the SDK client: only a stuck poold gets here, and the bench
// ends with an error.
func (w *leaseWorker) abort() {
	w.stop()
	_ = w.b.sdk.Close()
}

// heldLease returns a worker that holds one lease for the whole cell.
func (b *bench) heldLease(pool string, deadline time.Time) (rrWorker, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := b.sdk.Lease(ctx, pool)
	if err != nil {
		return nil, err
	}
	return &heldWorker{c: c, b: b}, nil
}

type heldWorker struct {
	c *client.Conn
	b *bench
}

func (w *heldWorker) roundTrip(req, resp []byte) error { return echoRoundTrip(w.c, req, resp) }
func (w *heldWorker) persistent() bool                 { return true }
func (w *heldWorker) close()                           { _ = w.c.Close() }
func (w *heldWorker) abort()                           { _ = w.c.Discard() }

// echoRoundTrip writes req to c and reads the echo into resp.
func echoRoundTrip(c net.Conn, req, resp []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		return err
	}
	if !bytes.Equal(req, resp) {
		return errors.New("response differs from request")
	}
	return nil
}
