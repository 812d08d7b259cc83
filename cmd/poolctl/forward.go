package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/poolplane/poolplane/client"
)

// defaultShutdownTimeout bounds how long forward waits for open
// connections after SIGINT/SIGTERM before it closes them.
const defaultShutdownTimeout = 30 * time.Second

// defaultHalfCloseTimeout bounds how long a lease outlives its local
// connection's EOF while the upstream sends nothing: an upstream that
// ignores the half-close (and never closes) would otherwise hold the lease
// forever.
const defaultHalfCloseTimeout = 30 * time.Second

func forwardCommand() *command {
	return &command{
		name: "forward", args: "POOL [--listen ADDR]",
		summary: "accept local TCP connections and relay each through its own lease of POOL",
		minArgs: 1, maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			listen := fs.StringP("listen", "l", "127.0.0.1:0", "accept connections on local `ADDR` (port 0 picks one)")
			name := fs.String("client-name", "", "client `NAME` shown by poolctl leases (default host/poolctl:pid)")
			acquire := fs.Duration("acquire-timeout", 0, "bound on each lease's wait for a connection (0: the pool's acquire_timeout)")
			grace := fs.Duration("shutdown-timeout", defaultShutdownTimeout, "after SIGINT/SIGTERM, wait this long for connections, then close them")
			reuse := fs.Bool("reuse", false,
				"on a RAW pool, release a lease as reusable when its local client closes (EOF), for clients known to close only "+
					"after reading every reply; by default a local EOF on a RAW pool half-closes the upstream and the connection is "+
					"not reused, since a reply may still be on its way and must not reach the next client. A pool with a protocol "+
					"(REDIS, HTTP1, POSTGRES) decides reuse itself, with or without --reuse: after a local EOF the replies due still reach the "+
					"client, then its EOF, and the pool resets the connection")
			_ = fs.Bool("half-close", true, "kept for scripts: half-closing the upstream on a local EOF is the default on a RAW pool (see --reuse)")
			halfClose := fs.Duration("half-close-timeout", defaultHalfCloseTimeout,
				"end a lease once the upstream is silent this long after the local EOF (0: never); not with --reuse on a RAW pool, whose local EOF releases the lease at once")
			return func(ctx context.Context, e *env, args []string) error {
				if *acquire < 0 || *grace < 0 || *halfClose < 0 {
					return usagef("forward: durations must not be negative")
				}
				if keepAwake != nil {
					keepAwake() // a relay: its idle moments must not cost a wake-up each (internal/awake)
				}
				c, err := e.newClient(*name)
				if err != nil {
					return err
				}
				defer func() { _ = c.Close() }()
				f := &forwarder{
					c:                c,
					pool:             poolName(args[0]),
					acquireTimeout:   *acquire,
					halfCloseTimeout: *halfClose,
					reuse:            *reuse,
					log:              &lockedWriter{w: e.stderr},
					conns:            map[*forwardConn]struct{}{},
				}
				return f.run(ctx, *listen, *grace, e.stdout)
			}
		},
	}
}

// forwarder relays accepted connections through leases.
type forwarder struct {
	c              *client.Client
	pool           string
	acquireTimeout time.Duration
	// reuse makes a local EOF release the lease as reusable instead of
	// half-closing the upstream, on a RAW pool (a pool with a protocol
	// decides reuse itself, and lets the replies due through first).
	reuse bool
	// halfCloseTimeout bounds how long the upstream may stay silent after
	// the local side's EOF; 0 means forever.
	halfCloseTimeout time.Duration
	log              io.Writer // safe for concurrent use

	wg sync.WaitGroup // one per accepted connection

	mu    sync.Mutex // protects conns
	conns map[*forwardConn]struct{}
}

// forwardConn is one relayed connection.
type forwardConn struct {
	local net.Conn

	mu     sync.Mutex // protects up and closed
	up     *client.Conn
	closed bool // forceClose was called
}

// run listens on addr and relays until ctx ends; then it stops accepting,
// waits up to grace for open connections and closes the rest.
func (f *forwarder) run(ctx context.Context, addr string, grace time.Duration, stdout io.Writer) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	_, _ = fmt.Fprintf(stdout, "forwarding %s -> %s\n", ln.Addr(), f.pool)

	var acceptErr error
	backoff := time.Duration(0)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			if isTemporary(err) {
				// Out of file descriptors and the like: back off as
				// net/http's Server does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				_, _ = fmt.Fprintf(f.log, "poolctl: forward: accept: %v; retrying in %s\n", err, backoff)
				time.Sleep(backoff)
				continue
			}
			acceptErr = fmt.Errorf("forward: accept: %w", err)
			break
		}
		backoff = 0
		fc := &forwardConn{local: conn}
		f.mu.Lock()
		f.conns[fc] = struct{}{}
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.serve(ctx, fc)
			f.mu.Lock()
			delete(f.conns, fc)
			f.mu.Unlock()
		}()
	}
	_ = ln.Close()
	f.shutdown(grace)
	return acceptErr
}

// isTemporary reports accept errors worth retrying (EMFILE, ENFILE,
// ECONNABORTED...).
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// shutdown waits up to grace for the open connections, then closes the
// rest and waits for their goroutines.
func (f *forwarder) shutdown(grace time.Duration) {
	f.mu.Lock()
	n := len(f.conns)
	f.mu.Unlock()
	if n == 0 {
		f.wg.Wait()
		return
	}
	_, _ = fmt.Fprintf(f.log, "poolctl: forward: stopped listening; waiting up to %s for %d connections\n", grace, n)
	donec := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(donec)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-donec:
		return
	case <-timer.C:
	}
	f.mu.Lock()
	for fc := range f.conns {
		fc.forceClose()
	}
	f.mu.Unlock()
	<-donec
}

// forceClose closes both ends of fc; the upstream connection is discarded.
func (fc *forwardConn) forceClose() {
	fc.mu.Lock()
	fc.closed = true
	up := fc.up
	fc.mu.Unlock()
	_ = fc.local.Close()
	if up != nil {
		_ = up.Discard()
	}
}

// serve leases a connection for fc and copies bytes both ways, as TCP
// does: a FIN from either side reaches the other (CloseWrite), and bytes go
// on flowing the other way until that side's FIN too. Then the lease is
// released, not reusable: on a RAW pool forward cannot know where the
// upstream's replies end, and a reply still on its way must not reach the
// next client. With reuse, the local side's EOF releases the lease at once,
// reusable when clean, for clients that close only after every reply. On a
// pool with a protocol (the lease's PoolDecidesReuse) the half-close does
// not reach the upstream: the pool relays the replies due, then the
// lease's EOF, which forward mirrors to the client before it releases the
// lease; the pool resets the connection, or closes it. An error on either
// side, or an upstream silent for halfCloseTimeout after the local EOF,
// closes both and discards the upstream connection.
func (f *forwarder) serve(ctx context.Context, fc *forwardConn) {
	local := fc.local
	defer func() { _ = local.Close() }()
	lctx := ctx
	if f.acquireTimeout > 0 {
		var cancel context.CancelFunc
		lctx, cancel = context.WithTimeout(ctx, f.acquireTimeout)
		defer cancel()
	}
	up, err := f.c.Lease(lctx, f.pool)
	if err != nil {
		msg := strings.TrimPrefix(strings.TrimSuffix(formatError(err), "\n"), "poolctl: ")
		_, _ = fmt.Fprintf(f.log, "poolctl: forward: %s: lease: %s\n", local.RemoteAddr(), msg)
		return
	}
	fc.mu.Lock()
	fc.up = up
	closed := fc.closed
	fc.mu.Unlock()
	if closed { // shut down while leasing
		_ = up.Discard()
		return
	}

	// poolDecides: the pool follows the protocol and decides reuse at
	// release, whatever the client side says.
	poolDecides := up.Info().PoolDecidesReuse()
	// releaseOnEOF: the local side's EOF releases the lease at once.
	releaseOnEOF := f.reuse && !poolDecides
	var (
		wg       sync.WaitGroup
		failed   atomic.Bool
		localEOF atomic.Bool // the local side sent its FIN
	)
	fail := func() {
		failed.Store(true)
		_ = up.Discard()
		_ = local.Close()
	}
	wg.Go(func() { // local -> upstream
		if _, err := io.Copy(up, local); err != nil {
			fail()
			return
		}
		localEOF.Store(true)
		if f.reuse && !poolDecides {
			// The client closed after a complete exchange: release now.
			// The read loop below ends with net.ErrClosed.
			f.released(local, up.CloseIdle())
			return
		}
		_ = up.CloseWrite()
		if f.halfCloseTimeout > 0 {
			_ = up.SetReadDeadline(time.Now().Add(f.halfCloseTimeout))
		}
	})
	// upstream -> local. After the local EOF, an upstream silent for
	// halfCloseTimeout ends the lease (its read deadline is pushed back
	// before every read).
	buf := make([]byte, 32<<10)
	for {
		if localEOF.Load() && !releaseOnEOF && f.halfCloseTimeout > 0 {
			_ = up.SetReadDeadline(time.Now().Add(f.halfCloseTimeout))
		}
		n, rerr := up.Read(buf)
		if n > 0 {
			if _, werr := local.Write(buf[:n]); werr != nil {
				fail()
				break
			}
		}
		if errors.Is(rerr, io.EOF) {
			// The upstream's FIN: mirrored to the client, whose bytes still
			// reach the upstream until its own FIN.
			if cw, ok := local.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			break
		}
		if rerr != nil {
			if !releaseOnEOF || !localEOF.Load() {
				fail()
			}
			break
		}
	}
	wg.Wait()
	if failed.Load() || releaseOnEOF {
		return // discarded, or released by the local EOF
	}
	f.released(local, up.Discard())
}

// released logs a release that reported bytes the upstream never took.
func (f *forwarder) released(local net.Conn, err error) {
	if err != nil {
		_, _ = fmt.Fprintf(f.log, "poolctl: forward: %s: %v\n", local.RemoteAddr(), err)
	}
}

// lockedWriter serialises writes from the connection goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// Write writes p to the underlying writer, one call at a time.
func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
