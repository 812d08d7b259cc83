package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/poolplane/poolplane/protocol"
)

// upstreamAddr is one resolved address of an endpoint.
type upstreamAddr struct {
	addr     string // "ip:port"
	host     string // the endpoint's host, the default TLS server name
	endpoint string // the configured "host:port"
	literal  bool   // the endpoint's host is an IP literal: never re-resolved
}

// errNoAddress is returned by a dial when an endpoint resolves to nothing.
var errNoAddress = errors.New("no address")

// setEndpointsLocked resets the address list from cfg.Endpoints: IP literals
// are used as they are, names wait for the next resolution (due now).
func (p *Pool) setEndpointsLocked() {
	p.addrs = p.addrs[:0:0]
	p.hasNames = false
	for _, ep := range p.cfg.Endpoints {
		host, _, err := net.SplitHostPort(ep)
		if err != nil {
			continue // Validate rejects it; a dial reports it
		}
		if net.ParseIP(host) != nil {
			p.addrs = append(p.addrs, upstreamAddr{addr: ep, host: host, endpoint: ep, literal: true})
		} else {
			p.hasNames = true
		}
	}
	p.lastResolve = time.Time{}
	p.keepEndpointsLocked()
	p.kickLocked()
}

func newTLSBase(t TLSConfig) (*tls.Config, error) {
	cfg, err := t.clientTLS("")
	if err != nil {
		return nil, err
	}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	return cfg, nil
}

// dialNeedLocked is how many dials the pool wants in flight: one per queued
// acquirer (unless paused) plus the min_idle shortfall, and at least the
// probe while the circuit is open. Idle connections out for a health check
// are not a shortfall: they count as idle until the check fails.
func (p *Pool) dialNeedLocked() int {
	if p.closed || p.state == StateDraining || p.fenced {
		return 0
	}
	need := max(p.cfg.Limits.MinIdle-p.idleLocked(), 0)
	if p.state == StateActive {
		need += p.waiters.Len()
	}
	if p.circuitOpen {
		// Probe on our own after each backoff, so the circuit closes (and
		// Serving turns true) without waiting for an acquire.
		need = max(need, 1)
	}
	return need
}

// maybeDialLocked starts the dials the pool needs, within max_connections,
// the dial backoff and the circuit (one probe at a time while open). ctx
// supplies values for the dials (a caller's, or context.Background()); its
// cancellation is ignored.
func (p *Pool) maybeDialLocked(ctx context.Context) {
	need := p.dialNeedLocked()
	if p.dialing >= need {
		return
	}
	if !p.nextDialAt.IsZero() && p.env.Now().Before(p.nextDialAt) {
		p.kickLocked() // the maintenance loop dials when the backoff ends
		return
	}
	for p.dialing < need && p.total+p.dialing+p.closing < p.cfg.Limits.MaxConnections {
		if p.circuitOpen && p.dialing > 0 {
			return
		}
		p.startDialLocked(ctx)
	}
}

// dialSpec is what one dial needs, copied under the lock.
type dialSpec struct {
	target    upstreamAddr
	endpoint  string // set when target is not resolved yet
	gen       uint64
	timeout   time.Duration
	keepAlive time.Duration
	tlsBase   *tls.Config
	handler   protocol.Handler
	proto     Protocol // the config's protocol, which handler follows
	jitter    float64
	failRound uint64          // Pool.failRound when the dial started
	stop      context.Context // Pool.dialCtx: cancelled by a fence or Close
}

// endpointName is the configured endpoint the dial is for.
func (s *dialSpec) endpointName() string {
	if s.endpoint != "" {
		return s.endpoint
	}
	return s.target.endpoint
}

func (p *Pool) startDialLocked(ctx context.Context) {
	p.dialing++
	p.st.dials++
	s := dialSpec{
		gen:       p.gen,
		timeout:   p.cfg.Limits.DialTimeout,
		keepAlive: p.cfg.Lifecycle.TCPKeepAlive,
		tlsBase:   p.tlsBase,
		handler:   p.handler,
		proto:     p.cfg.Protocol,
		jitter:    rand.Float64(),
		failRound: p.failRound,
		stop:      p.dialCtx,
	}
	if len(p.addrs) > 0 && (!p.hasNames || !p.lastResolve.IsZero()) {
		s.target = p.addrs[p.rr%len(p.addrs)]
	} else {
		// Names not resolved yet: this dial resolves its endpoint itself.
		s.endpoint = p.cfg.Endpoints[p.rr%len(p.cfg.Endpoints)]
	}
	p.endpointLocked(s.endpointName()).dials++
	p.rr++
	p.dialWG.Add(1)
	go p.runDial(ctx, s)
}

// runDial dials on behalf of the pool. The dial keeps ctx's values but not
// its cancellation: it ends with dial_timeout, the pool's Close, or a
// fence.
func (p *Pool) runDial(ctx context.Context, s dialSpec) {
	defer p.dialWG.Done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	stop := context.AfterFunc(s.stop, cancel)
	defer stop()

	start := p.env.Now()
	nc, state, target, err := p.dial(ctx, s)
	p.dialDone(nc, state, target, s, start, err)
}

// dial dials one connection, with its TLS handshake and its protocol's
// setup; state is what the setup returned for the connection's sessions.
func (p *Pool) dial(ctx context.Context, s dialSpec) (nc net.Conn, state any, target upstreamAddr, err error) {
	target = s.target
	if s.endpoint != "" {
		addrs, err := p.resolveEndpoint(ctx, s.endpoint)
		if err != nil {
			return nil, nil, target, err
		}
		target = addrs[rand.IntN(len(addrs))]
	}
	// Every address is checked right before it is dialed, whatever the
	// resolver said earlier: a name rebound to a forbidden address fails.
	if err := p.checkDial(target.host, target.addr); err != nil {
		return nil, nil, target, err
	}
	if p.env.Dial != nil {
		nc, err = p.env.Dial(ctx, "tcp", target.addr)
	} else {
		d := net.Dialer{KeepAlive: s.keepAlive}
		nc, err = d.DialContext(ctx, "tcp", target.addr)
	}
	if err != nil {
		return nil, nil, target, fmt.Errorf("dial %s: %w", target.addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok && p.env.Dial != nil {
		if s.keepAlive < 0 {
			_ = tc.SetKeepAlive(false) // best effort on a custom dialer's conn
		} else {
			_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: s.keepAlive, Interval: s.keepAlive})
		}
	}
	if s.tlsBase != nil {
		cfg := s.tlsBase.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = target.host
		}
		var v tlsVerdict
		v.watch(cfg, nc)
		tc := tls.Client(nc, cfg)
		start := time.Now()
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close() // the handshake error is what matters
			return nil, nil, target, fmt.Errorf("tls handshake with %s: %w", target.addr, err)
		}
		deadline, _ := ctx.Deadline()
		if nc, err = confirmClientCert(tc, &v, time.Since(start), deadline); err != nil {
			_ = tc.Close() // the refusal is what matters
			return nil, nil, target, fmt.Errorf("tls handshake with %s: %w", target.addr, err)
		}
	}
	if s.handler != nil {
		set, st, err := s.handler.Setup(protocol.WithEndpointHost(ctx, target.host), nc)
		if err != nil {
			_ = nc.Close() // the setup error is what matters
			return nil, nil, target, fmt.Errorf("%s: %w", target.addr, err)
		}
		nc, state = set, st
	}
	return nc, state, target, nil
}

// backoff returns the wait after n consecutive dial failures: exponential
// from dialBackoffBase, capped at dialBackoffMax, with equal jitter.
func backoff(n int) time.Duration {
	d := dialBackoffMax
	if n < 20 {
		d = min(dialBackoffBase<<(n-1), dialBackoffMax)
	}
	return d/2 + rand.N(d/2+1)
}

// dialDone files the result of a dial.
func (p *Pool) dialDone(nc net.Conn, state any, target upstreamAddr, s dialSpec, start time.Time, err error) {
	p.mu.Lock()
	now := p.env.Now()
	p.dialing--
	if err != nil {
		if p.closed {
			p.mu.Unlock()
			return // cancelled by Close
		}
		if s.stop.Err() != nil {
			// Cancelled by a fence: not an upstream failure.
			p.maybeDialLocked(context.Background())
			p.notifyLocked()
			p.mu.Unlock()
			return
		}
		p.st.dialFailures++
		p.endpointLocked(s.endpointName()).dialFailures++
		p.lastDialErr = err
		if s.failRound == p.failRound {
			// The first failure among the dials started since the last
			// one: a new round. Dials of the same round (started
			// together, for several waiters) failing after it count
			// once, so one refused burst neither escalates the backoff
			// nor opens the circuit by itself.
			p.failRound++
			p.consecFails++
			p.nextDialAt = now.Add(backoff(p.consecFails))
		}
		if p.consecFails >= circuitThreshold && !p.circuitOpen {
			p.circuitOpen = true
			p.env.Logger.Warn("upstream circuit open", "pool", p.name, "consecutive_failures", p.consecFails, "err", err)
		}
		refused := errors.Is(err, ErrUpstreamNotAllowed)
		if (p.circuitOpen || refused) && p.total == 0 && p.dialing == 0 {
			// Nothing can serve the queued acquires before the next probe
			// (a refused upstream stays refused until the policy or DNS
			// changes): acquireErrorLocked names a refusal as such.
			for e := p.waiters.PopFront(); e != nil; e = p.waiters.PopFront() {
				e.Value.ch <- waitResult{err: p.acquireErrorLocked(ErrUnavailable, now)}
			}
		}
		p.kickLocked()
		p.notifyLocked()
		p.mu.Unlock()
		return
	}
	p.st.dialTime.observe(now.Sub(start))
	p.st.opened++
	p.endpointLocked(s.endpointName()).opened++
	if p.circuitOpen {
		p.env.Logger.Info("upstream circuit closed", "pool", p.name, "addr", target.addr)
	}
	p.consecFails, p.circuitOpen, p.nextDialAt, p.lastDialErr = 0, false, time.Time{}, nil
	c := p.newConn(nc, target, s.gen, now, s.jitter)
	c.handler, c.proto, c.pstate = s.handler, s.proto, state
	p.total++
	p.genCount[c.gen]++
	reason, bad := p.putLocked(c, now)
	if bad {
		p.discardLocked(c, reason)
	}
	p.maybeDialLocked(context.Background())
	p.notifyLocked()
	p.mu.Unlock()
	if bad {
		p.closeConn(c)
	}
}

// resolveEndpoint resolves one "host:port" endpoint.
func (p *Pool) resolveEndpoint(ctx context.Context, ep string) ([]upstreamAddr, error) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if net.ParseIP(host) != nil {
		return []upstreamAddr{{addr: ep, host: host, endpoint: ep, literal: true}}, nil
	}
	ips, err := p.env.Resolver.LookupHost(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", host, errNoAddress)
	}
	out := make([]upstreamAddr, 0, len(ips))
	var refused error
	for _, ip := range ips {
		a := upstreamAddr{addr: net.JoinHostPort(ip, port), host: host, endpoint: ep}
		if err := p.checkDial(host, a.addr); err != nil {
			// Never dialed: dial checks again, but a refused address
			// must not take a turn in the round-robin.
			p.env.Logger.Warn("resolved address refused by the upstream policy", "pool", p.name, "endpoint", ep, "err", err)
			refused = err
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolve %s: every address refused: %w", host, refused)
	}
	return out, nil
}

// refreshDNS re-resolves every endpoint (run by the maintenance loop, without
// the lock) and applies the result: a departed address retires its
// connections, idle ones at once and leased ones on release. An endpoint
// that fails to resolve keeps its previous addresses.
func (p *Pool) refreshDNS() {
	p.mu.Lock()
	eps := p.cfg.Endpoints
	gen := p.gen
	timeout := p.cfg.Limits.DialTimeout
	old := p.addrs
	p.resolving = true
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	var addrs []upstreamAddr
	for _, ep := range eps {
		got, err := p.resolveEndpoint(ctx, ep)
		if err != nil {
			p.env.Logger.Warn("endpoint resolution", "pool", p.name, "endpoint", ep, "err", err)
			for _, a := range old {
				if a.endpoint == ep {
					addrs = append(addrs, a)
				}
			}
			continue
		}
		addrs = append(addrs, got...)
	}

	p.mu.Lock()
	p.resolving = false
	p.lastResolve = p.env.Now()
	if gen != p.gen || p.closed {
		p.mu.Unlock()
		return
	}
	p.addrs = addrs
	live := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		live[a.addr] = true
	}
	departed := func(c *Conn) bool { return !live[c.addr] }
	toClose := p.discardIdleLocked(nil, func(c *Conn) (CloseReason, bool) {
		return CloseDNS, departed(c)
	})
	for _, c := range p.leased {
		if departed(c) {
			c.retire = CloseDNS
		}
	}
	p.maybeDialLocked(context.Background())
	p.notifyLocked()
	p.mu.Unlock()
	p.closeAll(toClose)
}
