package server

import (
	"context"
	"errors"
	"sync"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// This file ends the streams of principals an auth file reload revoked
// (Authenticator.Update). A stream authenticated once, when it opened; when
// its principal is revoked it is authenticated again with the credentials
// it opened with (its bearer token, its client certificate), and ends when
// they name no principal any more (UNAUTHENTICATED) or one without the
// permission the stream uses (PERMISSION_DENIED).
//
// Lease streams (leaseStream) are checked by their handler goroutine, which
// waits anyway: an idle stream or one holding a lease of a pool its
// principal may no longer lease ends at once (a held lease's upstream
// connection is closed, as when a client vanishes), and every open checks
// the principal in force. Other streams (watches, backups) end at once
// through revocationStream.

// reauthorize authenticates ctx, a call's context, again and checks that
// the principal found may still call method. It returns that principal
// (nil when the AuthFunc stores none).
func reauthorize(ctx context.Context, reauth auth.AuthFunc, method string) (*Principal, error) {
	actx, err := reauth(ctx)
	if err != nil {
		return nil, err
	}
	if err := authorize(actx, method); err != nil {
		return nil, err
	}
	return PrincipalFromContext(actx), nil
}

// currentPrincipal returns the principal the stream acts as.
func (ls *leaseStream) currentPrincipal() *Principal {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.principal
}

// openAs records pool as the pool of the lease being opened (for a
// revocation's check of a held lease) and returns the principal the open
// acts as: the stream's, authenticated again first if it was revoked
// since.
func (ls *leaseStream) openAs(pool string) (*Principal, error) {
	ls.mu.Lock()
	ls.pool = pool
	p := ls.principal
	ls.mu.Unlock()
	select {
	case <-p.revokedc():
		if err := ls.refreshPrincipal(); err != nil {
			return nil, err
		}
		return ls.currentPrincipal(), nil
	default:
		return p, nil
	}
}

// refreshPrincipal authenticates the stream again after its principal was
// revoked and makes the principal found the stream's. It fails when the
// credentials no longer authenticate, the new principal may not lease, or
// it may not lease the pool of the lease being opened or held.
func (ls *leaseStream) refreshPrincipal() error {
	if ls.srv.reauth == nil {
		return nil
	}
	p, err := reauthorize(ls.ctx, ls.srv.reauth, poolv1.LeaseService_Lease_FullMethodName)
	if err != nil {
		return err
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.busy && ls.pool != "" {
		if err := checkPoolOf(p, ls.pool); err != nil {
			return err
		}
	}
	ls.principal = p
	return nil
}

// wait is the Lease handler's wait: until the receive loop ends
// (done, with its result), the server shuts down (not done), or the
// stream's principal is revoked and the stream may not go on (done, with
// the status that ends it).
func (ls *leaseStream) wait() (done bool, err error) {
	for {
		var revokedc <-chan struct{} // nil: never, without reauth
		if ls.srv.reauth != nil {
			revokedc = ls.currentPrincipal().revokedc()
		}
		select {
		case <-ls.donec:
			return true, ls.err
		case <-ls.srv.stopc:
			return false, nil
		case reader := <-ls.runc: // nil with reauth: revokedc is watched
			reader()
		case <-revokedc:
			if err := ls.refreshPrincipal(); err != nil {
				ls.mu.Lock()
				ls.finished = true // send nothing more: the handler returns
				ls.mu.Unlock()
				ls.srv.logger.Info("lease stream ended: its principal was revoked", "err", err)
				return true, err
			}
		}
	}
}

// revocationStream is the stream interceptor that ends a stream (but a
// Lease stream, which leaseStream handles) once its principal is revoked
// and reauth with the stream's credentials no longer admits the method.
// The handler's context is cancelled and the stream ends with the
// authentication or authorization status.
func revocationStream(reauth auth.AuthFunc) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		p := PrincipalFromContext(ss.Context())
		if reauth == nil || p.revokedc() == nil || info.FullMethod == poolv1.LeaseService_Lease_FullMethodName {
			return h(srv, ss)
		}
		ctx, cancel := context.WithCancelCause(ss.Context())
		defer cancel(nil)
		w := &revocationWatch{ctx: ss.Context(), method: info.FullMethod, reauth: reauth, cancel: cancel}
		w.watch(p)
		err := h(srv, &contextStream{ServerStream: ss, ctx: ctx})
		w.stop()
		if cause := context.Cause(ctx); ctx.Err() != nil && ss.Context().Err() == nil {
			if _, ok := status.FromError(cause); ok && !errors.Is(cause, context.Canceled) {
				return cause // revoked: the status that ended it, not the handler's Canceled
			}
		}
		return err
	}
}

// revocationWatch re-checks one stream each time its principal is
// revoked. Owned by revocationStream: stop ends the watch and waits for a
// check in progress.
type revocationWatch struct {
	ctx    context.Context // the stream's, with its credentials
	method string
	reauth auth.AuthFunc
	cancel context.CancelCauseFunc

	mu      sync.Mutex // protects the following fields
	stopf   func() bool
	stopped bool
	checks  sync.WaitGroup // the check started by the revocation, if any
}

// watch arranges a check when p is revoked.
func (w *revocationWatch) watch(p *Principal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || p == nil || p.revoked == nil {
		return
	}
	w.checks.Add(1)
	w.stopf = context.AfterFunc(p.revoked, func() {
		defer w.checks.Done()
		p, err := reauthorize(w.ctx, w.reauth, w.method)
		if err != nil {
			w.cancel(err)
			return
		}
		w.watch(p)
	})
}

// stop ends the watch and waits for a check in progress.
func (w *revocationWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	if w.stopf != nil && w.stopf() {
		w.checks.Done() // the check never runs
	}
	w.mu.Unlock()
	w.checks.Wait()
}

// contextStream is a grpc.ServerStream whose handler sees ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
