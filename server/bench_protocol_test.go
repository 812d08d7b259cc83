package server_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"
)

// benchProtocol runs the same traffic to upstream through a RAW pool and a
// pool of protocol p, in one run: each op either leases, sends req, reads
// its reply with read and releases (lease-per-request), or does 100 such
// exchanges on one lease (100-on-open-lease). The protocol pool's CPU per
// op is reported as a ratio to the RAW one's (x-raw-cpu): what following
// every message costs, and resetting each connection at release.
func benchProtocol(b *testing.B, upstream string, p poolmgr.Protocol, req []byte, read func(*bufio.Reader) error) {
	srv := servertest.Start(b, servertest.Options{Store: store.Options{NoSync: true}})
	pools := []string{"raw", strings.ToLower(p.String())}
	for i, proto := range []poolmgr.Protocol{poolmgr.ProtocolRaw, p} {
		cfg := poolmgr.Config{Endpoints: []string{upstream}, Protocol: proto,
			Limits: poolmgr.Limits{MaxConnections: 16, MaxWaiters: 4096}}
		if _, err := srv.Manager.Create(context.Background(), pools[i], cfg, poolmgr.WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	c := newBenchClient(b, srv.Addr)
	ops := []struct {
		name string
		op   func(pool string) error
	}{
		{"lease-per-request", func(pool string) error {
			conn, err := c.LeaseWith(context.Background(), pool, req)
			if err != nil {
				return err
			}
			if err := read(bufio.NewReaderSize(conn, 512)); err != nil {
				conn.Discard()
				return err
			}
			return conn.Close()
		}},
		{"100-on-open-lease", func(pool string) error {
			conn, err := c.Lease(context.Background(), pool)
			if err != nil {
				return err
			}
			defer conn.Close()
			br := bufio.NewReaderSize(conn, 512)
			for range 100 {
				if _, err := conn.Write(req); err != nil {
					return err
				}
				if err := read(br); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, o := range ops {
		b.Run("op="+o.name, func(b *testing.B) {
			var raw float64
			for _, pool := range pools {
				b.Run("pool="+pool, func(b *testing.B) {
					b.ReportAllocs()
					b.SetParallelism(4)
					start := cpuTime()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := o.op(pool); err != nil {
								b.Error(err)
								return
							}
						}
					})
					per := float64(cpuTime()-start) / float64(b.N)
					b.ReportMetric(per, "cpu-ns/op")
					if pool == "raw" {
						raw = per
					} else if raw > 0 {
						b.ReportMetric(per/raw, "x-raw-cpu")
					}
				})
			}
		})
	}
}

// BenchmarkProtocolRedis: GET of a missing key on a real redis-server.
func BenchmarkProtocolRedis(b *testing.B) {
	nilReply := []byte("$-1\r\n")
	benchProtocol(b, testkit.Redis(b), poolmgr.ProtocolRedis, []byte("*2\r\n$3\r\nGET\r\n$6\r\nabsent\r\n"),
		func(br *bufio.Reader) error {
			var buf [5]byte
			if _, err := io.ReadFull(br, buf[:]); err != nil {
				return err
			}
			if !bytes.Equal(buf[:], nilReply) {
				return fmt.Errorf("GET answered %q", buf)
			}
			return nil
		})
}

// BenchmarkProtocolHTTP1: GET of a 5-byte file from a real nginx.
func BenchmarkProtocolHTTP1(b *testing.B) {
	root := b.TempDir()
	if err := os.WriteFile(filepath.Join(root, "small.txt"), []byte("hello"), 0o644); err != nil {
		b.Fatal(err)
	}
	addr := testkit.Nginx(b, root, "")
	benchProtocol(b, addr, poolmgr.ProtocolHTTP1, []byte("GET /small.txt HTTP/1.1\r\nHost: web\r\n\r\n"),
		func(br *bufio.Reader) error {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != "hello" {
				return fmt.Errorf("GET answered %s %q: %w", resp.Status, body, err)
			}
			return nil
		})
}
