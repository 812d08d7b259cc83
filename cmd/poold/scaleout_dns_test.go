package main

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// dnsServer answers A queries for one name with a fixed list of IPv4
// addresses over UDP on loopback, and every other query with no answer:
// enough for gRPC's dns resolver given this server as its authority.
func dnsServer(t *testing.T, name string, ips ...net.IP) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	qname := dnsmessage.MustNewName(name)
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var req dnsmessage.Message
			if err := req.Unpack(buf[:n]); err != nil || len(req.Questions) != 1 {
				continue
			}
			q := req.Questions[0]
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: req.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeSuccess},
				Questions: req.Questions,
			}
			if q.Name == qname && q.Type == dnsmessage.TypeA {
				for _, ip := range ips {
					resp.Answers = append(resp.Answers, dnsmessage.Resource{
						Header: dnsmessage.ResourceHeader{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 1},
						Body:   &dnsmessage.AResource{A: [4]byte(ip.To4())},
					})
				}
			}
			out, err := resp.Pack()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(out, from)
		}
	})
	return pc.LocalAddr().String()
}

// samePort returns a TCP port free on every one of ips at the time of the
// call (the replicas below listen on one port, one address each, as
// replicas behind one DNS name do).
func samePort(t *testing.T, ips ...net.IP) int {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", net.JoinHostPort(ips[0].String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{first}
		ok := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return 0
}

// Three replicas behind one DNS name, as a client given
// "dns:///poold.internal:7700" sees them: the SDK resolves the name (here
// against a DNS server of the test, named as the target's authority),
// connects to every address, and its leases take turns over the three.
func TestScaleOutDNSTarget(t *testing.T) {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3)}
	for _, ip := range ips[1:] {
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			t.Skipf("cannot listen on %s (loopback has only 127.0.0.1 here): %v", ip, err)
		}
		l.Close()
	}
	srv := etcdtest.Start(t)
	storeURL := "etcd://" + srv.Endpoint() + "/dns"
	up := testkit.EchoServer(t)
	port := samePort(t, ips...)
	var rs []*poold
	for _, ip := range ips {
		rs = append(rs, startPoold(t, t.TempDir(), "--store", storeURL, "--listen", net.JoinHostPort(ip.String(), strconv.Itoa(port))))
	}
	ctx := t.Context()
	admin := poolv1.NewPoolAdminServiceClient(dial(t, rs[0].grpcAddr))
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		testkit.WaitWithin(t, time.Second, "pool on "+r.grpcAddr, func() bool {
			_, err := statsFor(t, r.grpcAddr).GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/echo"})
			return err == nil
		})
	}

	dnsAddr := dnsServer(t, "poold.test.", ips...)
	target := fmt.Sprintf("dns://%s/poold.test:%d", dnsAddr, port)
	c, err := client.New(target, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	testkit.WaitWithin(t, 5*time.Second, "every replica leasing", func() bool {
		if err := echoLease(ctx, c, "echo", 0); err != nil {
			t.Fatalf("lease through %s: %v", target, err)
		}
		for _, r := range rs {
			if acquires(t, r.grpcAddr, "echo") == 0 {
				return false
			}
		}
		return true
	})
	var before []uint64
	for _, r := range rs {
		before = append(before, acquires(t, r.grpcAddr, "echo"))
	}
	const n = 30
	for i := range n {
		if err := echoLease(ctx, c, "echo", i); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	for i, r := range rs {
		if got := acquires(t, r.grpcAddr, "echo") - before[i]; got != n/3 {
			t.Errorf("replica %s granted %d of %d leases, want %d", r.grpcAddr, got, n, n/3)
		}
	}

	// One replica stops: the rest take every lease.
	if code := rs[2].stop(t); code != 0 {
		t.Fatalf("poold %s exited with %d", rs[2].grpcAddr, code)
	}
	for i := range n {
		if err := echoLease(ctx, c, "echo", n+i); err != nil {
			t.Fatalf("lease %d after a replica stopped: %v", i, err)
		}
	}
}
