package engine

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"github.com/poolplane/poolplane/protocol/redis"
)

// maxSleep bounds the maintenance loop's sleep when nothing is scheduled.
const maxSleep = time.Minute

// loop is the pool's one maintenance goroutine: it expires idle connections
// (idle_timeout, max_lifetime), health-checks them, refills min_idle, retries
// dials after their backoff, re-resolves names and revokes leases held past
// max_lease_duration. It sleeps on one timer until the next thing is due or
// it is kicked.
func (p *Pool) loop() {
	defer close(p.donec)
	t := time.NewTimer(maxSleep)
	defer t.Stop()
	for {
		t.Reset(p.maintain())
		select {
		case <-p.stopc:
			return
		case <-p.kickc:
		case <-t.C:
		}
	}
}

// maintain does what is due and returns how long to sleep.
func (p *Pool) maintain() time.Duration {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return maxSleep
	}
	now := p.env.Now()
	cfg := &p.cfg
	hc := cfg.HealthCheck
	var toClose, toProbe []*Conn

	// Idle connections: lifetime, idle_timeout (never below min_idle),
	// retired ones, and those due for a health check.
	excess := p.idleLocked() - cfg.Limits.MinIdle
	p.idle.Filter(func(c *Conn) bool {
		reason, bad := p.retireReasonLocked(c, now)
		if !bad && excess > 0 && now.Sub(c.idleSince) >= cfg.Lifecycle.IdleTimeout {
			reason, bad = CloseIdleTimeout, true
		}
		if bad {
			excess--
			p.discardLocked(c, reason)
			toClose = append(toClose, c)
			return false
		}
		if hc.Kind != HealthNone && now.Sub(c.lastCheck) >= hc.Interval {
			// Out of the idle set for the check, but still idle in
			// the accounting: min_idle is not short of it.
			c.state = connChecking
			p.probing++
			toProbe = append(toProbe, c)
			return false
		}
		return true
	})

	// Acquires queued past acquire_timeout fail.
	for e := p.waiters.Front(); e != nil; {
		next := e.Next()
		if w := e.Value; !now.Before(w.deadline) {
			p.waiters.Remove(e)
			p.st.timeouts++
			w.ch <- waitResult{err: p.acquireErrorLocked(ErrAcquireTimeout, now)}
		}
		e = next
	}

	// Leases held past max_lease_duration are revoked.
	if d := cfg.Lifecycle.MaxLeaseDuration; d > 0 {
		for i := 0; i < len(p.leased); {
			c := p.leased[i]
			if now.Sub(c.since) >= d {
				p.discardLocked(c, CloseMaxLeaseDuration) // swaps the last lease into i
				toClose = append(toClose, c)
				continue
			}
			i++
		}
	}

	resolve := p.hasNames && !p.resolving && !now.Before(p.lastResolve.Add(cfg.DNSRefresh))
	p.maybeDialLocked(context.Background())
	p.mu.Unlock()

	p.closeAll(toClose)
	if len(toProbe) > 0 {
		p.probeAll(toProbe, hc)
	}
	if resolve {
		p.refreshDNS()
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	// Kicks sent so far (some by this sweep) are answered by the schedule
	// computed now; later ones come after it and wake the loop again.
	select {
	case <-p.kickc:
	default:
	}
	now = p.env.Now()
	d := p.nextWakeLocked(now)
	p.wakeAt = now.Add(d)
	return d
}

// nextWakeLocked is how long until the next scheduled maintenance.
func (p *Pool) nextWakeLocked(now time.Time) time.Duration {
	next := now.Add(maxSleep)
	at := func(t time.Time) {
		if t.After(now) && t.Before(next) {
			next = t
		}
	}
	cfg := &p.cfg
	aboveMin := p.idleLocked() > cfg.Limits.MinIdle
	for i := range p.idle.Len() {
		c := p.idle.At(i)
		at(p.expiryLocked(c))
		if aboveMin {
			at(c.idleSince.Add(cfg.Lifecycle.IdleTimeout))
		}
		if cfg.HealthCheck.Kind != HealthNone {
			at(c.lastCheck.Add(cfg.HealthCheck.Interval))
		}
	}
	if d := cfg.Lifecycle.MaxLeaseDuration; d > 0 {
		for _, c := range p.leased {
			at(c.since.Add(d))
		}
	}
	for e := p.waiters.Front(); e != nil; e = e.Next() {
		at(e.Value.deadline)
	}
	if p.hasNames {
		at(p.lastResolve.Add(cfg.DNSRefresh))
	}
	if p.dialing < p.dialNeedLocked() {
		at(p.nextDialAt)
	}
	return next.Sub(now)
}

// idleLocked counts the idle connections: those in the idle set and those
// out of it for a health check (probing). min_idle, max_idle and Stats
// count both, so a check never makes the pool dial a replacement for a
// connection that is only being checked.
func (p *Pool) idleLocked() int { return p.idle.Len() + p.probing }

// probeAll health-checks connections taken out of the idle set, without the
// lock, and puts the healthy ones back.
func (p *Pool) probeAll(cs []*Conn, hc HealthCheck) {
	for _, c := range cs {
		ok := p.probe(c, hc)
		p.mu.Lock()
		p.probing--
		now := p.env.Now()
		c.lastCheck = now
		if ok {
			p.st.healthOK++
		} else {
			p.st.healthFailed++
		}
		reason, bad := CloseUnhealthy, !ok
		if !bad {
			// Back in its place by idle age: keep the idle time it had.
			idleSince := c.idleSince
			reason, bad = p.putLocked(c, now)
			if !bad && c.state == connIdle {
				c.idleSince = idleSince
			}
		}
		if bad {
			p.discardLocked(c, reason)
		}
		p.mu.Unlock()
		if bad {
			p.closeConn(c)
		}
	}
}

// probe runs one health check on c, owned by the caller. Every kind starts
// with the peek; HTTP and REDIS_PING then exchange a request and a reply
// within hc.Timeout, and so do TCP and TLS on a protocol pool, with the
// protocol's probe.
func (p *Pool) probe(c *Conn, hc HealthCheck) bool {
	if !c.alive() {
		return false
	}
	switch hc.Kind {
	case HealthHTTP, HealthRedisPing:
	default:
		// TCP and TLS: on a protocol pool, also the protocol's own probe
		// (a Redis PING, a PostgreSQL SELECT 1).
		return c.handler == nil || c.probeProtocol(hc.Timeout)
	}
	// Socket deadlines are wall-clock time, so time.Now here, not Env.Now.
	if c.nc.SetDeadline(time.Now().Add(hc.Timeout)) != nil {
		return false
	}
	var ok bool
	if hc.Kind == HealthHTTP {
		ok = probeHTTP(c.nc, c.host, hc.HTTPPath)
	} else {
		ok = redis.Ping(c.nc) == nil
	}
	return ok && c.nc.SetDeadline(time.Time{}) == nil
}

func probeHTTP(rw io.ReadWriter, host, path string) bool {
	var b bytes.Buffer
	b.WriteString("HEAD ")
	b.WriteString(path)
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.WriteString(host)
	b.WriteString("\r\nUser-Agent: poolplane-health\r\n\r\n")
	if _, err := rw.Write(b.Bytes()); err != nil {
		return false
	}
	br := bufio.NewReader(rw)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		return false
	}
	_ = resp.Body.Close() // a HEAD response has no body
	return resp.StatusCode >= 200 && resp.StatusCode < 400 && !resp.Close && br.Buffered() == 0
}

// probeProtocol runs the pool protocol's probe on c, owned by the caller,
// within timeout.
func (c *Conn) probeProtocol(timeout time.Duration) bool {
	// Socket deadlines are wall-clock time.
	if c.nc.SetDeadline(time.Now().Add(timeout)) != nil {
		return false
	}
	return c.handler.Probe(c.nc) == nil && c.nc.SetDeadline(time.Time{}) == nil
}
