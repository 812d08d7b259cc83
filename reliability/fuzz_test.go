package reliability_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"

	"github.com/poolplane/poolplane/internal/testkit"
)

// Frame ops of FuzzLeaseFrames: each input byte picks one, and some take
// the next byte as an argument.
const (
	opOpen       = iota // arg: pool, timeout and name choice
	opData              // arg: length (0-15) of the payload that follows
	opCloseWrite        //
	opRelease           // arg: reusable (low bit)
	opEmpty             // a frame with no oneof set
	opHugeData          // a data frame over server.MaxDataFrame
	opSync              // wait for the next server frame
	opCloseSend         // end the client side; nothing more is sent
	numOps
)

var fuzzPools = []string{"fz", "pools/fz", "nope", "", "Bad Name", "pools/" + strings.Repeat("x", 70)}

// decodeFrames turns fuzz input into client frames and sync points (nil).
// At most 32 steps.
func decodeFrames(in []byte) (steps []*poolv1.LeaseRequest, closeSendAt int) {
	closeSendAt = -1
	next := func() byte {
		if len(in) == 0 {
			return 0
		}
		b := in[0]
		in = in[1:]
		return b
	}
	for len(in) > 0 && len(steps) < 32 && closeSendAt < 0 {
		switch next() % numOps {
		case opOpen:
			a := next()
			o := &poolv1.LeaseRequest_Open{Pool: fuzzPools[int(a)%len(fuzzPools)], ClientName: "fuzz"}
			switch (a >> 3) % 4 {
			case 1:
				o.AcquireTimeout = durationpb.New(time.Duration(a>>5+1) * 20 * time.Millisecond)
			case 2:
				o.AcquireTimeout = &durationpb.Duration{Seconds: -1}
			case 3:
				o.AcquireTimeout = &durationpb.Duration{Seconds: 1, Nanos: -1} // invalid
			}
			if a&0x80 != 0 {
				o.ClientName = strings.Repeat("n", 129)
			}
			steps = append(steps, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: o}})
		case opData:
			n := int(next() % 16)
			n = min(n, len(in))
			d := append([]byte(nil), in[:n]...)
			in = in[n:]
			steps = append(steps, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: d}}})
		case opCloseWrite:
			steps = append(steps, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_CloseWrite_{CloseWrite: &poolv1.LeaseRequest_CloseWrite{}}})
		case opRelease:
			steps = append(steps, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: next()&1 == 1}}})
		case opEmpty:
			steps = append(steps, &poolv1.LeaseRequest{})
		case opHugeData:
			steps = append(steps, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: make([]byte, server.MaxDataFrame+1)}}})
		case opSync:
			steps = append(steps, nil)
		case opCloseSend:
			closeSendAt = len(steps)
		}
	}
	return steps, closeSendAt
}

// documented maps each code a Lease stream may end with to its reasons.
var documented = map[codes.Code][]poolv1.ErrorReason{
	codes.InvalidArgument:    {poolv1.ErrorReason_PROTOCOL_VIOLATION, poolv1.ErrorReason_INVALID_ARGUMENT},
	codes.NotFound:           {poolv1.ErrorReason_POOL_NOT_FOUND},
	codes.ResourceExhausted:  {poolv1.ErrorReason_BACKLOG_FULL},
	codes.DeadlineExceeded:   {poolv1.ErrorReason_ACQUIRE_TIMEOUT},
	codes.Unavailable:        {poolv1.ErrorReason_UPSTREAM_UNAVAILABLE, poolv1.ErrorReason_POOL_CLOSED},
	codes.FailedPrecondition: {poolv1.ErrorReason_POOL_DRAINING},
}

// FuzzLeaseFrames sends arbitrary frame sequences on Lease streams of a
// real in-process server (over a real store and an echo upstream) and
// checks: no panic (the server would answer INTERNAL, or the process
// crash), the stream always ends, only documented codes and reasons, the
// server's frames come in order (granted, data, ended per lease), and no
// leak: in use returns to 0 and the upstream never sees more than
// max_connections.
func FuzzLeaseFrames(f *testing.F) {
	for _, seed := range [][]byte{
		{opOpen, 0, opSync, opData, 3, 'h', 'i', '\n', opSync, opRelease, 1, opSync}, // a clean lease
		{opOpen, 0, opData, 2, 'a', 'b', opRelease, 1, opOpen, 1, opRelease, 0},      // pipelined leases
		{opData, 1, 'x'},                      // data before open
		{opRelease, 1},                        // release without a lease
		{opOpen, 0, opOpen, 0},                // second open
		{opOpen, 2},                           // no such pool
		{opOpen, 3}, {opOpen, 4}, {opOpen, 5}, // bad names
		{opOpen, 0x10}, {opOpen, 0x18}, {opOpen, 0x80}, // bad timeout, bad name length
		{opOpen, 0, opCloseWrite, opSync, opRelease, 1},              // half-close
		{opOpen, 0, opSync, opCloseSend},                             // abandoned lease
		{opOpen, 0, opHugeData},                                      // oversized data
		{opEmpty},                                                    // empty frame
		{opOpen, 0, opRelease, 1, opRelease, 1},                      // double release
		{opOpen, 0, opOpen, 0x28, opSync, opOpen, 1, opSync, opSync}, // queueing
	} {
		f.Add(seed)
	}
	up := startUpstream(f, "127.0.0.1:0", echoLines)
	srv := startServer(f, srvOptions{})
	const maxConns = 2
	p := srv.create(f, "fz", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: maxConns, MaxWaiters: 1, AcquireTimeout: 200 * time.Millisecond},
	})
	leases := poolv1.NewLeaseServiceClient(srv.cc)

	f.Fuzz(func(t *testing.T, in []byte) {
		steps, closeSendAt := decodeFrames(in)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := leases.Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The receiver collects every server frame; the size is the
		// most a sequence can produce before the sender syncs (32
		// steps, a few frames each), so the receiver never blocks.
		framec := make(chan *poolv1.LeaseResponse, 1024)
		var endErr error
		recvDone := make(chan struct{})
		go func() {
			defer close(recvDone)
			defer close(framec)
			for {
				m, err := stream.Recv()
				if err != nil {
					endErr = err
					return
				}
				select {
				case framec <- m:
				default:
					endErr = errors.New("test: too many frames")
					cancel()
					return
				}
			}
		}()
		var got []*poolv1.LeaseResponse
		for i, s := range steps {
			if i == closeSendAt {
				break
			}
			if s == nil {
				select {
				case m, ok := <-framec:
					if ok {
						got = append(got, m)
					}
				case <-time.After(200 * time.Millisecond): // nothing came: go on
				}
				continue
			}
			if err := stream.Send(s); err != nil {
				break // the server ended the stream: Recv says how
			}
		}
		_ = stream.CloseSend() // the client side is done; an abandoned lease closes
		select {
		case <-recvDone:
		case <-ctx.Done():
			t.Fatalf("the stream did not end after CloseSend (steps %v)", steps)
		}
		for m := range framec {
			got = append(got, m)
		}
		checkServerFrames(t, got)
		if !errors.Is(endErr, io.EOF) {
			checkEndStatus(t, endErr)
		}
		testkit.WaitWithin(t, 10*time.Second, "in use back to 0", func() bool { return p.Stats().InUse == 0 })
		if n := up.open.Load(); n > maxConns {
			t.Fatalf("upstream has %d connections open, max_connections %d", n, maxConns)
		}
	})
}

// checkServerFrames checks the order of a stream's server frames.
func checkServerFrames(t *testing.T, frames []*poolv1.LeaseResponse) {
	t.Helper()
	leased := false
	for i, m := range frames {
		switch m.GetFrame().(type) {
		case *poolv1.LeaseResponse_Granted_:
			if leased {
				t.Fatalf("frame %d: granted during a lease", i)
			}
			leased = true
		case *poolv1.LeaseResponse_Data_:
			if !leased {
				t.Fatalf("frame %d: data outside a lease", i)
			}
		case *poolv1.LeaseResponse_Ended_:
			if !leased {
				t.Fatalf("frame %d: ended outside a lease", i)
			}
			leased = false
		default:
			t.Fatalf("frame %d: empty", i)
		}
	}
}

// checkEndStatus checks that a stream ended with a documented code and one
// ErrorInfo in the poolplane.dev domain with a documented reason.
func checkEndStatus(t *testing.T, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("stream ended with a non-status error: %v", err)
	}
	reasons, ok := documented[st.Code()]
	if !ok {
		t.Fatalf("stream ended with undocumented code %v: %v", st.Code(), err)
	}
	var infos []*errdetails.ErrorInfo
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			infos = append(infos, ei)
		}
	}
	if len(infos) != 1 || infos[0].GetDomain() != server.ErrorDomain {
		t.Fatalf("status %v: want one ErrorInfo of domain %s, got %v", err, server.ErrorDomain, infos)
	}
	for _, r := range reasons {
		if infos[0].GetReason() == r.String() {
			return
		}
	}
	t.Fatalf("status %v: reason %s is not documented for %v", err, infos[0].GetReason(), st.Code())
}
