package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// TestLeaseRefusesUnprintableClientName: a client_name that would reach an
// operator's terminal as an escape sequence, or a log as a forged line,
// is refused before anything is acquired; a printable one is listed as is.
func TestLeaseRefusesUnprintableClientName(t *testing.T) {
	e := startAuthEnv(t, nil, nil, nil)
	e.create(t, "echo")
	cc := e.dial(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lc := poolv1.NewLeaseServiceClient(cc)
	for _, name := range []string{"\x1b[2J\x1b[H", "job\nlevel=ERROR msg=forged", "rtl\u202eexe.txt"} {
		s, err := lc.Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "pools/echo", ClientName: name}}})
		if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "client_name") {
			t.Errorf("open with client_name %q: %v, want INVALID_ARGUMENT", name, err)
		}
	}
	if p, _ := e.mgr.Pool("echo"); p.Stats().Acquires != 0 {
		t.Fatal("a refused open acquired a connection")
	}

	s, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "pools/echo", ClientName: "worker 7 (café)"}}})
	recvGranted(t, s)
	list, err := poolv1.NewPoolAdminServiceClient(cc).ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: "pools/-"})
	if err != nil || len(list.GetLeases()) != 1 || list.GetLeases()[0].GetClientName() != "worker 7 (café)" {
		t.Fatalf("ListLeases: %v %v", list, err)
	}
	mustSend(t, s, releaseFrame(true))
	recvEnded(t, s)
}
