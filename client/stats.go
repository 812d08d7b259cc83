package client

import (
	"context"
	"errors"
	"io"
	"iter"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// poolName returns "pools/{pool}" for a bare pool ID or a full name.
func poolName(pool string) string {
	if strings.HasPrefix(pool, "pools/") {
		return pool
	}
	return "pools/" + pool
}

// PoolStats returns a snapshot of pool's statistics ("name" or
// "pools/name"). Errors are *Error values matching ErrPoolNotFound,
// ErrPermissionDenied or ErrUnauthenticated among others. Safe for
// concurrent use.
func (c *Client) PoolStats(ctx context.Context, pool string) (*poolv1.PoolStats, error) {
	st, err := c.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: poolName(pool)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return st, nil
}

// WatchStats streams snapshots of the named pools (every pool when none is
// named) every interval (the server's default of 1s when 0; the server
// allows 100ms to 1h). The first snapshot comes at once:
//
//	for snap, err := range c.WatchStats(ctx, time.Second, "api") {
//		if err != nil {
//			return err
//		}
//		use(snap.GetStats())
//	}
//
// The sequence ends after yielding one error (an *Error, or ctx's error
// when ctx ends), when the server ends the stream, or when the loop breaks,
// which cancels the stream. It can be ranged over more than once; each range
// opens a new stream. Safe for concurrent use.
func (c *Client) WatchStats(ctx context.Context, interval time.Duration, pools ...string) iter.Seq2[*poolv1.WatchPoolStatsResponse, error] {
	return func(yield func(*poolv1.WatchPoolStatsResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		req := &poolv1.WatchPoolStatsRequest{}
		for _, p := range pools {
			req.Names = append(req.Names, poolName(p))
		}
		if interval > 0 {
			req.Interval = durationpb.New(interval)
		}
		st, err := c.stats.WatchPoolStats(ctx, req)
		if err != nil {
			yield(nil, watchErr(ctx, err))
			return
		}
		for {
			resp, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, watchErr(ctx, err))
				return
			}
			if !yield(resp, nil) {
				return
			}
		}
	}
}

func watchErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return fromStatus(err)
}
