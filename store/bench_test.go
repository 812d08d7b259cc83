package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

func BenchmarkPut(b *testing.B) {
	// With fsync: the cost every real write pays.
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	value := make([]byte, 256)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Put(ctx, fmt.Sprintf("key/%d", i%1000), value, Any(), "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s, _ := newStore(b, Options{})
	ctx := context.Background()
	for i := range 1000 {
		mustPut(b, s, fmt.Sprintf("key/%d", i), string(make([]byte, 256)), Any())
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Get(ctx, fmt.Sprintf("key/%d", i%1000)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkList10000(b *testing.B) {
	s, _ := newStore(b, Options{})
	ctx := context.Background()
	ops := make([]Op, 0, 1000)
	for i := range 10000 {
		ops = append(ops, Op{Kind: OpPut, Key: fmt.Sprintf("pool/%05d", i), Value: make([]byte, 256)})
		if len(ops) == cap(ops) {
			if _, err := s.Txn(ctx, ops, "bench"); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		kvs, _, err := s.List(ctx, "pool/", 0, "")
		if err != nil || len(kvs) != 10000 {
			b.Fatal(len(kvs), err)
		}
	}
}

func BenchmarkTxn100(b *testing.B) {
	// With fsync, like BenchmarkPut: 100 puts at one revision.
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	ops := make([]Op, 100)
	for i := range ops {
		ops[i] = Op{Kind: OpPut, Key: fmt.Sprintf("key/%03d", i), Value: make([]byte, 256)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Txn(ctx, ops, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
