package server

import (
	"errors"
	"net"
	"os"
	"time"

	"google.golang.org/grpc/mem"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

const (
	// progressTick is how long a write to the upstream may block before
	// the relay reports the bytes written so far to the client (a data
	// frame with no bytes and upstream_written). A client waiting in
	// Close for its bytes to be delivered counts each report as progress.
	progressTick = 25 * time.Millisecond
	// tlsChunk is how much of a data frame goes to a TLS upstream in one
	// Write: a TLS record's worth, so progress is seen between records.
	tlsChunk = 16 << 10
)

// errCut is what an upstream write returns once the lease was cut.
var errCut = errors.New("lease cut")

// writeUpstream writes a data frame's bytes to the lease's upstream
// connection, counting them in l.bytesOut as they go. A write that blocks
// (the upstream reads slowly or not at all) waits for as long as it takes,
// as TCP would, reporting progress to the client every progressTick, until
// the lease is cut (revoke, shutdown, the stream's end), which wakes it at
// once. On a TCP or Unix socket the bytes go out with one writev; on a TLS
// connection in records of at most tlsChunk bytes.
func (ls *leaseStream) writeUpstream(l *lease, p mem.BufferSlice) error {
	switch l.nc.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return ls.writeChunks(l, p)
	}
	ls.iov = ls.iov[:0]
	for _, b := range p {
		ls.iov = append(ls.iov, b.ReadOnlyData())
	}
	iov := ls.iov // consumed as it is written; ls.iov keeps the scratch
	defer clear(ls.iov)
	for len(iov) > 0 {
		now := time.Now()
		l.maybeReport(ls, now)
		if err := l.nc.SetWriteDeadline(now.Add(progressTick)); err != nil {
			return err
		}
		if l.isCut() {
			return errCut // cut sets its deadline before the flag is read here
		}
		var n int64
		var err error
		if len(iov) == 1 {
			var k int
			k, err = l.nc.Write(iov[0])
			n = int64(k)
			iov[0] = iov[0][k:]
			if len(iov[0]) == 0 {
				iov = iov[:0]
			}
		} else {
			w := iov
			n, err = w.WriteTo(l.nc) // consumes what it wrote
			iov = w
		}
		l.bytesOut.Add(n)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || l.isCut() {
			return err
		}
	}
	l.maybeReport(ls, time.Now())
	return nil
}

// maybeReport sends the client a progress report (a data frame with no
// bytes and upstream_written) when bytes were written since the last one
// and the last is progressTick old: a client waiting in Close for its bytes
// to be delivered sees them move however slowly the upstream reads, while
// a fast exchange sends none (its replies carry upstream_written).
func (l *lease) maybeReport(ls *leaseStream, now time.Time) {
	w := l.bytesOut.Load()
	if w == l.reported || now.Sub(l.reportedAt) < progressTick {
		return
	}
	if l.reportedAt.IsZero() {
		l.reportedAt = now // the first write of the lease starts the clock
		return
	}
	l.reported, l.reportedAt = w, now
	ls.sendProgress(w)
}

// writeChunks writes p to a connection that cannot take write deadlines
// and go on (crypto/tls fails for good after one), in chunks, reporting
// progress between them.
func (ls *leaseStream) writeChunks(l *lease, p mem.BufferSlice) error {
	for _, b := range p {
		for d := b.ReadOnlyData(); len(d) > 0; {
			l.maybeReport(ls, time.Now())
			k := min(len(d), tlsChunk)
			n, err := l.nc.Write(d[:k])
			l.bytesOut.Add(int64(n))
			if err != nil {
				return err
			}
			d = d[k:]
		}
	}
	l.maybeReport(ls, time.Now())
	return nil
}

// sendProgress reports written client bytes without upstream bytes. A
// failed send is the stream's end, which the receive loop sees next.
func (ls *leaseStream) sendProgress(written int64) {
	_ = ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{UpstreamWritten: uint64(written)}}})
}
