package store_test

import (
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/storetest"
)

// TestConformance runs the backend-independent suite against bbolt.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts storetest.Options) storetest.Store {
		t.Helper()
		s, err := store.Open(filepath.Join(t.TempDir(), "store.db"), store.Options{
			NoSync:       true,
			HistoryLimit: opts.HistoryLimit,
			Now:          opts.Now,
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		ignore := goleak.IgnoreCurrent()
		t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}
