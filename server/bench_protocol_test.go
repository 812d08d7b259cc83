package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"
)

// BenchmarkProtocolRedis is the same Redis traffic through a RAW pool and
// a REDIS pool of one server, in one run, on a real redis-server: the
// CPU a REDIS pool adds for following every command and reply (per-op on
// an open lease) and for resetting each connection at release
// (lease-per-request). Each REDIS case reports its CPU per op as a ratio
// to the RAW one (x-raw-cpu).
func BenchmarkProtocolRedis(b *testing.B) {
	addr := testkit.Redis(b)
	srv := servertest.Start(b, servertest.Options{Store: store.Options{NoSync: true}})
	for name, p := range map[string]poolmgr.Protocol{"raw": poolmgr.ProtocolRaw, "redis": poolmgr.ProtocolRedis} {
		cfg := poolmgr.Config{Endpoints: []string{addr}, Protocol: p,
			Limits: poolmgr.Limits{MaxConnections: 16, MaxWaiters: 4096}}
		if _, err := srv.Manager.Create(context.Background(), name, cfg, poolmgr.WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	c := newBenchClient(b, srv.Addr)
	get := []byte("*2\r\n$3\r\nGET\r\n$6\r\nabsent\r\n")
	nilReply := []byte("$-1\r\n")
	cpu := map[string]float64{}
	run := func(b *testing.B, name string, op func(b *testing.B, pool string, buf []byte) error) {
		for _, pool := range []string{"raw", "redis"} {
			b.Run("pool="+pool, func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(4)
				start := cpuTime()
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, len(nilReply))
					for pb.Next() {
						if err := op(b, pool, buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
				per := float64(cpuTime()-start) / float64(b.N)
				b.ReportMetric(per, "cpu-ns/op")
				cpu[name+pool] = per
				if raw := cpu[name+"raw"]; pool == "redis" && raw > 0 {
					b.ReportMetric(per/raw, "x-raw-cpu")
				}
			})
		}
	}
	check := func(buf []byte) error {
		if !bytes.Equal(buf, nilReply) {
			return fmt.Errorf("GET answered %q", buf)
		}
		return nil
	}
	b.Run("op=lease-per-request", func(b *testing.B) {
		run(b, "lpr", func(b *testing.B, pool string, buf []byte) error {
			conn, err := c.LeaseWith(context.Background(), pool, get)
			if err != nil {
				return err
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				conn.Discard()
				return err
			}
			if err := check(buf); err != nil {
				return err
			}
			return conn.Close()
		})
	})
	b.Run("op=get-on-open-lease", func(b *testing.B) {
		run(b, "open", func(b *testing.B, pool string, buf []byte) error {
			conn, err := c.Lease(context.Background(), pool)
			if err != nil {
				return err
			}
			defer conn.Close()
			for range 100 {
				if _, err := conn.Write(get); err != nil {
					return err
				}
				if _, err := io.ReadFull(conn, buf); err != nil {
					return err
				}
				if err := check(buf); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
