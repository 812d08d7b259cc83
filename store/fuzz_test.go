package store

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
)

func FuzzPutGet(f *testing.F) {
	f.Add("a", []byte("v"))
	f.Add("", []byte("v"))
	f.Add("pool/1", []byte{})
	f.Add("\x00", []byte{0, 1, 2})
	f.Add("\xff\xfe/k", bytes.Repeat([]byte("x"), 1000))
	f.Add("k/"+string(bytes.Repeat([]byte("k"), MaxKeySize-2)), []byte("v")) // longest key

	s, err := Open(filepath.Join(f.TempDir(), "fuzz.db"), Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })

	f.Fuzz(func(t *testing.T, key string, value []byte) {
		ctx := t.Context()
		rev, err := s.Put(ctx, key, value, Any(), "fuzz")
		if key == "" || len(key) > MaxKeySize || len(value) > MaxValueSize {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("Put(%q) = %v, want ErrInvalidArgument", key, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Put(%q): %v", key, err)
		}
		kv, err := s.Get(ctx, key)
		if err != nil || kv.Key != key || !bytes.Equal(kv.Value, value) || kv.ModRevision != rev {
			t.Fatalf("Get(%q) = %+v, %v; want value %q at %d", key, kv, err, value, rev)
		}
		kvs, _, err := s.List(ctx, key, 1, "")
		if err != nil || len(kvs) != 1 || kvs[0].Key != key {
			t.Fatalf("List(%q) = %+v, %v", key, kvs, err)
		}
		e, err := s.HistoryAt(ctx, key, rev)
		if err != nil || e.Revision != rev || !bytes.Equal(e.Value, value) {
			t.Fatalf("HistoryAt(%q, %d) = %+v, %v", key, rev, e, err)
		}
	})
}
