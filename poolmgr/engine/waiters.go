package engine

import (
	"context"
	"time"

	"github.com/poolplane/poolplane/poolmgr/engine/internal/waitq"
)

// The acquire queue: callers that found nothing idle wait here, first in
// first out, until a connection is released or dialled for them, their
// deadline passes (the maintenance loop fails them) or they give up.

// waiter is one queued acquirer. Waiters are recycled through
// Pool.freeWaiters, so a wait allocates nothing in steady state.
type waiter struct {
	elem waitq.Elem[*waiter]
	ch   chan waitResult // size 1: exactly one delivery, which never blocks
	// deadline is when the acquire times out (acquire_timeout, or the
	// caller's shorter one: AcquireWithin); the maintenance loop fails
	// the waiter then, so a wait needs no timer of its own.
	deadline time.Time
	holder   string
	start    time.Time
}

// waitResult is delivered to a waiter: a leased connection, an error, or
// retry (go back and look at the idle set, after Resume).
type waitResult struct {
	c     *Conn
	err   error
	retry bool
}

func (p *Pool) getWaiterLocked(holder string, start time.Time) *waiter {
	var w *waiter
	if n := len(p.freeWaiters); n > 0 {
		w = p.freeWaiters[n-1]
		p.freeWaiters[n-1] = nil
		p.freeWaiters = p.freeWaiters[:n-1]
	} else {
		w = &waiter{ch: make(chan waitResult, 1)}
		w.elem.Value = w
	}
	w.holder, w.start = holder, start
	return w
}

func (p *Pool) putWaiterLocked(w *waiter) {
	w.holder = ""
	if len(p.freeWaiters) < maxFreeWaiters {
		p.freeWaiters = append(p.freeWaiters, w)
	}
}

// refuseWaitLocked returns the error an acquire that found nothing idle
// fails with at once, rather than queueing: ErrUnavailable when it would
// need a dial but the circuit is open and its probe is either running (and
// spoken for) or not due yet; ErrExhausted when max_waiters are already
// queued beyond the dials in flight.
func (p *Pool) refuseWaitLocked(now time.Time) error {
	canDial := p.state == StateActive && p.total+p.dialing < p.cfg.Limits.MaxConnections
	if canDial && p.circuitOpen && p.waiters.Len() >= p.dialing && (p.dialing > 0 || now.Before(p.nextDialAt)) {
		return p.acquireErrorLocked(ErrUnavailable, now)
	}
	if !canDial && p.waiters.Len()-p.dialing >= p.cfg.Limits.MaxWaiters {
		p.st.backlogRejections++
		return p.acquireErrorLocked(ErrExhausted, now)
	}
	return nil
}

// enqueueLocked queues w (a new waiter if nil) at the back, and lets the
// pool dial for it if it may.
func (p *Pool) enqueueLocked(ctx context.Context, w *waiter, holder string, start time.Time, timeout time.Duration) *waiter {
	if w == nil {
		w = p.getWaiterLocked(holder, start)
		d := p.cfg.Limits.AcquireTimeout
		if timeout > 0 && timeout < d {
			d = timeout
		}
		w.deadline = start.Add(d)
		p.st.waits++
	}
	p.waiters.PushBack(&w.elem)
	p.scheduleLocked(w.deadline)
	p.maybeDialLocked(ctx)
	p.notifyLocked()
	return w
}

// leaveQueueLocked takes w, whose caller gave up, out of the queue. If w
// was served meanwhile, it passes a retry on to the next waiter, or gives
// the connection delivered back to the pool, and returns it when it is to
// be discarded instead, with the reason.
func (p *Pool) leaveQueueLocked(w *waiter) (*Conn, CloseReason) {
	if p.waiters.Remove(&w.elem) {
		p.notifyLocked()
		return nil, 0
	}
	// Already served: the result is in w.ch.
	r := <-w.ch
	if r.retry && p.state == StateActive && p.idle.Len() > 0 {
		// Pass the wake-up on to the next waiter.
		if e := p.waiters.PopFront(); e != nil {
			e.Value.ch <- waitResult{retry: true}
		}
	}
	c := r.c
	if c == nil {
		return nil, 0
	}
	p.unleaseLocked(c)
	p.st.acquires--
	if c.reused {
		p.st.reused--
	} else {
		p.st.created--
	}
	c.uses--
	if reason, bad := p.putLocked(c, p.env.Now()); bad {
		return c, reason
	}
	return nil, 0
}

// failWaitersLocked ends every queued acquire with err.
func (p *Pool) failWaitersLocked(err error) {
	for e := p.waiters.PopFront(); e != nil; e = p.waiters.PopFront() {
		e.Value.ch <- waitResult{err: err}
	}
}
