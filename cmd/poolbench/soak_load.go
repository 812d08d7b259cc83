package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// runLoad runs the workers, the admin churn and the sampler for the soak's
// duration and waits for them.
func (r *soakRun) runLoad(ctx context.Context, start time.Time) error {
	sdk, err := client.New(r.poold.addr, client.WithInsecure(), client.WithClientName("poolbench-soak"),
		client.WithIdleStreams(r.cfg.clients+r.cfg.holders+soakCancellers+soakSideClients))
	if err != nil {
		return err
	}
	defer func() { _ = sdk.Close() }()
	// The load stops by cancellation, not by a deadline: a deadline would
	// reach poold as the acquire timeout of the leases waiting at the end,
	// and their ACQUIRE_TIMEOUT could not be told from a real one.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	stopTimer := time.AfterFunc(time.Until(start.Add(r.cfg.duration)), stop)
	defer stopTimer.Stop()
	var wg sync.WaitGroup
	spawn := func(n int, f func(ctx context.Context, id int, rng *rand.Rand)) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(lctx, i, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
			}()
		}
	}
	spawn(r.cfg.clients, func(ctx context.Context, id int, rng *rand.Rand) { r.leasePerRequest(ctx, sdk, id, rng) })
	spawn(r.cfg.holders, func(ctx context.Context, id int, rng *rand.Rand) { r.holder(ctx, sdk, id, rng) })
	spawn(soakCancellers, func(ctx context.Context, id int, rng *rand.Rand) { r.canceller(ctx, sdk, id, rng) })
	spawn(soakSideClients, func(ctx context.Context, id int, rng *rand.Rand) { r.sideClient(ctx, sdk, id, rng) })
	spawn(1, func(ctx context.Context, _ int, rng *rand.Rand) { r.crasher(ctx, rng) })
	adminErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		adminErr <- r.churn(lctx)
	}()
	sampleErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		sampleErr <- r.sampler(lctx, start)
	}()
	// A watchdog: every worker bounds its I/O by cfg.timeout, so all are
	// back by then; if not, closing the SDK client unblocks them.
	donec := make(chan struct{})
	go func() {
		wg.Wait()
		close(donec)
	}()
	select {
	case <-donec:
	case <-time.After(time.Until(start.Add(r.cfg.duration)) + 3*r.cfg.timeout):
		_ = sdk.Close()
		<-donec
		return fmt.Errorf("load still running %v after the soak's end: aborted", 3*r.cfg.timeout)
	}
	if err := errors.Join(<-adminErr, <-sampleErr); err != nil {
		return err
	}
	// Every lease was closed or discarded, and the SDK client is still
	// open: a lease poold failed to end shows here, before closing the
	// client would end it.
	r.inUseOpenErr = r.waitFor(ctx, soakSettle, func() (bool, error) {
		s, err := r.sample(ctx, start)
		r.inUseOpen = s.inUse()
		return err == nil && s.inUse() == 0, err
	})
	if r.inUseOpenErr != nil && !errors.Is(r.inUseOpenErr, errNotWithin) {
		return r.inUseOpenErr
	}
	return nil
}

// req returns a request of the configured size, distinct per worker.
func (r *soakRun) req(id int) []byte { return bytes.Repeat([]byte{'a' + byte(id%26)}, r.cfg.size) }

// roundTrip leases from pool with req as 0-RTT data, reads the echo and
// releases: Close, or Discard once in ten. Once in twenty it abandons the
// lease instead: Discard without reading the echo.
func (r *soakRun) roundTrip(ctx context.Context, sdk *client.Client, pool string, req, resp []byte, rng *rand.Rand) error {
	lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	c, err := sdk.LeaseWith(lctx, pool, req)
	cancel()
	if err != nil {
		return err
	}
	r.leases.Add(1)
	if rng.IntN(20) == 0 {
		r.abandons.Add(1)
		return c.Discard()
	}
	if err := c.SetDeadline(time.Now().Add(r.cfg.timeout)); err != nil {
		_ = c.Discard()
		return err
	}
	if err := readEcho(c, req, resp); err != nil {
		return err
	}
	r.requests.Add(1)
	if rng.IntN(10) == 0 {
		r.discards.Add(1)
		return c.Discard()
	}
	return c.Close()
}

// leasePerRequest takes one lease per request from the main pool.
func (r *soakRun) leasePerRequest(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		if err := r.roundTrip(ctx, sdk, soakPoolMain, req, resp, rng); err != nil {
			if stopped(ctx, err) {
				return
			}
			r.fail("lease-per-request", false, err)
			pause(ctx, 10*time.Millisecond)
		}
	}
}

// holder holds a lease of the main pool for 100ms..2s of round trips, then
// releases it (Close, or Discard once in four) and takes another.
func (r *soakRun) holder(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+100), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
		c, err := sdk.Lease(lctx, soakPoolMain)
		cancel()
		if err != nil {
			if !stopped(ctx, err) {
				r.fail("holder", false, err)
			}
			pause(ctx, 10*time.Millisecond)
			continue
		}
		r.leases.Add(1)
		until := time.Now().Add(100*time.Millisecond + time.Duration(rng.Int64N(int64(1900*time.Millisecond))))
		ok := true
		for time.Now().Before(until) && ctx.Err() == nil {
			err := c.SetDeadline(time.Now().Add(r.cfg.timeout))
			if err == nil {
				err = echoRoundTrip(c, req, resp)
			}
			if err != nil {
				if err.Error() == errMismatch.Error() { // echoRoundTrip's own
					err = errMismatch
				}
				r.fail("holder", false, err)
				ok = false
				break
			}
			r.requests.Add(1)
			pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
		}
		if !ok || rng.IntN(4) == 0 {
			r.discards.Add(1)
			_ = c.Discard()
		} else {
			_ = c.Close()
		}
	}
}

// canceller starts leases whose acquire it cancels after 0..2ms: some are
// granted first (and used), some are cancelled while queued or opening.
func (r *soakRun) canceller(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+200), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		lctx, cancel := context.WithCancel(ctx)
		t := time.AfterFunc(time.Duration(rng.IntN(2000))*time.Microsecond, cancel)
		err := r.roundTrip(lctx, sdk, soakPoolMain, req, resp, rng)
		t.Stop()
		cancel()
		switch {
		case err == nil:
		case stopped(ctx, err):
		case errors.Is(err, context.Canceled):
			r.cancels.Add(1)
			r.fail("cancel", true, err)
		default:
			r.fail("cancel", false, err)
		}
		pause(ctx, time.Duration(rng.IntN(5))*time.Millisecond)
	}
}

// sideClient takes leases from the side pool, which churn drains and
// resumes: POOL_DRAINING is expected when a drain overlapped the lease.
func (r *soakRun) sideClient(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+300), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		e0 := r.sideEpoch.Load()
		err := r.roundTrip(ctx, sdk, soakPoolSide, req, resp, rng)
		if err == nil {
			pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
			continue
		}
		if stopped(ctx, err) {
			return
		}
		e1 := r.sideEpoch.Load()
		expected := errors.Is(err, client.ErrDraining) && (e0%2 == 1 || e1 != e0)
		r.fail("side-pool", expected, err)
		pause(ctx, 20*time.Millisecond)
	}
}

// crasher simulates client crashes: a fresh SDK client (its own gRPC
// connection, like another process) takes two leases, runs round trips on
// them, and is closed after 20..300ms with the leases held and requests in
// flight. poold must close those upstream connections, not reuse them.
func (r *soakRun) crasher(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		r.crashOnce(ctx, rng)
		pause(ctx, time.Duration(50+rng.IntN(150))*time.Millisecond)
	}
}

func (r *soakRun) crashOnce(ctx context.Context, rng *rand.Rand) {
	c, err := client.New(r.poold.addr, client.WithInsecure(), client.WithClientName("poolbench-soak-crash"))
	if err != nil {
		r.fail("crash", false, err)
		return
	}
	var crashed atomic.Bool
	var wg sync.WaitGroup
	defer func() {
		crashed.Store(true)
		_ = c.Close()
		wg.Wait()
	}()
	for i := range soakCrashLeases {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
		conn, err := c.Lease(lctx, soakPoolMain)
		cancel()
		if err != nil {
			if !stopped(ctx, err) {
				r.fail("crash", false, err)
			}
			return
		}
		r.leases.Add(1)
		r.crashLeases.Add(1)
		req, resp := r.req(400+i), make([]byte, r.cfg.size)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !crashed.Load() {
				err := conn.SetDeadline(time.Now().Add(r.cfg.timeout))
				if err == nil {
					err = echoRoundTrip(conn, req, resp)
				}
				if err != nil {
					if crashed.Load() {
						r.fail("crash", true, err)
					} else {
						r.fail("crash", false, err)
					}
					return
				}
				r.requests.Add(1)
			}
		}()
	}
	pause(ctx, time.Duration(20+rng.IntN(280))*time.Millisecond)
	r.crashes.Add(1)
}

// stopped reports whether err is the load's end: ctx, the load's context,
// was cancelled and err says so.
func stopped(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, context.Canceled)
}

// pause sleeps for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// churn changes the pools every churnEvery: shrink the main pool, drain
// the side pool, reconnect the main pool, resume the side pool, grow the
// main pool. It leaves both pools as created.
func (r *soakRun) churn(ctx context.Context) error {
	lo, hi, _ := r.cfg.limits()
	tick := time.NewTicker(r.cfg.churnEvery())
	defer tick.Stop()
	var errs []error
	call := func(what string, f func(context.Context) error) {
		// Admin calls outlive the load's end: the final restore must run.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.timeout)
		defer cancel()
		if err := f(rctx); err != nil {
			r.fail("admin "+what, false, err)
			if len(errs) < 3 {
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
			}
			return
		}
		r.admins.Add(1)
	}
	resize := func(n int32) {
		call("UpdatePool", func(ctx context.Context) error {
			_, err := r.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
				Pool: &poolv1.Pool{Name: poolsPrefix + soakPoolMain,
					Limits: &poolv1.Limits{MaxConnections: n, MaxIdle: n}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits.max_connections", "limits.max_idle"}},
			})
			return err
		})
		r.resizes.Add(1)
	}
	drain := func() {
		r.sideEpoch.Add(1) // odd: draining
		call("DrainPool", func(ctx context.Context) error {
			_, err := r.admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: poolsPrefix + soakPoolSide})
			return err
		})
		r.drains.Add(1)
	}
	resume := func() {
		call("ResumePool", func(ctx context.Context) error {
			_, err := r.admin.ResumePool(ctx, &poolv1.ResumePoolRequest{Name: poolsPrefix + soakPoolSide})
			return err
		})
		r.sideEpoch.Add(1) // even: active
	}
	draining, small := false, false
	for step := 0; ; step++ {
		select {
		case <-ctx.Done():
			if draining {
				resume()
			}
			if small {
				resize(hi)
			}
			return errors.Join(errs...)
		case <-tick.C:
		}
		switch step % 5 {
		case 0:
			resize(lo)
			small = true
		case 1:
			drain()
			draining = true
		case 2:
			call("ReconnectPool", func(ctx context.Context) error {
				_, err := r.admin.ReconnectPool(ctx, &poolv1.ReconnectPoolRequest{Name: poolsPrefix + soakPoolMain})
				return err
			})
			r.reconnects.Add(1)
		case 3:
			resume()
			draining = false
		case 4:
			resize(hi)
			small = false
		}
	}
}
