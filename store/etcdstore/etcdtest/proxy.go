package etcdtest

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections from a loopback port to a target address
// (an etcd member's client port), and can partition the clients that dial
// it from the target while the target keeps serving everyone else.
//
// Cut black-holes the partition the way a network does: connections stay
// open but every byte is dropped, both ways, so calls hang until their
// deadline rather than failing at once, and new connections are accepted
// but never forwarded. Restore closes every connection opened or held
// during the cut (their streams lost bytes) and forwards again, so
// clients reconnect at once. Its methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and every copy goroutine

	mu     sync.Mutex // protects following fields
	cut    bool
	epoch  uint64              // bumped by Restore; conns of older epochs are closed
	conns  map[net.Conn]uint64 // open conns (both sides) by the epoch they belong to
	closed bool
}

// NewProxy listens on 127.0.0.1:0, forwards to target, and closes at
// cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[net.Conn]uint64)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the address to dial instead of the target, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut partitions the proxy's clients from the target: bytes are dropped
// both ways until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		p.cut = true
		p.epoch++ // conns accepted from now on are held, never forwarded
	}
}

// Restore ends a Cut: every connection that lost bytes is closed, and new
// ones are forwarded.
func (p *Proxy) Restore() {
	p.mu.Lock()
	if !p.cut {
		p.mu.Unlock()
		return
	}
	p.cut = false
	p.epoch++
	var old []net.Conn
	for c, e := range p.conns {
		if e < p.epoch {
			old = append(old, c)
		}
	}
	p.mu.Unlock()
	for _, c := range old {
		_ = c.Close() // the copy goroutines see it and end
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// track registers c in the current epoch, or reports false after Close.
func (p *Proxy) track(c net.Conn) (epoch uint64, cut, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, false, false
	}
	p.conns[c] = p.epoch
	return p.epoch, p.cut, true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		_, cut, ok := p.track(c)
		if !ok {
			_ = c.Close()
			return
		}
		if cut {
			// Held without forwarding; Restore or Close closes it.
			p.wg.Add(1)
			go p.pipe(c, nil)
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			p.untrack(c)
			continue
		}
		if _, _, ok := p.track(u); !ok {
			_ = u.Close()
			p.untrack(c)
			return
		}
		p.wg.Add(2)
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

// pipe copies from src to dst (dst nil: discards) while not cut, dropping
// bytes while cut; at the end it closes both.
func (p *Proxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		p.untrack(src)
		if dst != nil {
			p.untrack(dst)
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && dst != nil {
			p.mu.Lock()
			cut := p.cut
			p.mu.Unlock()
			if !cut {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return // EOF, or closed by Restore, Close or the other pipe
		}
	}
}
