package engine

import (
	"errors"
	"testing"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/poolmgr/internal/keytest"
)

// TestReadKeyFileBounded: the key file reader refuses devices, FIFOs,
// directories, sockets, large files and missing paths with
// ErrClientKeyFile, and leaves nothing running. The registry's
// TestClientKeyFileBounded checks the same paths through the Manager.
func TestReadKeyFileBounded(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	f := keytest.NewFiles(t, MaxKeyFileSize)
	for _, path := range []string{"/dev/zero", f.FIFO, f.Dir, f.Sock, f.Big, f.Missing} {
		if _, err := readKeyFile(path); !errors.Is(err, ErrClientKeyFile) {
			t.Errorf("readKeyFile(%s) = %v", path, err)
		}
	}
}
