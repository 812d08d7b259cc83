package harness

import (
	"log/slog"
	"testing"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
	"github.com/poolplane/poolplane/store"
)

// Listeners returns a host for the pools' local listeners, to give the
// Manager (ManagerConfig.Listeners) before ServeListeners.
func Listeners(t testing.TB, logger *slog.Logger) *listen.Host {
	t.Helper()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h, err := listen.New(listen.Config{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// ServeListeners points h at m's pools, and closes h at the test's
// cleanup, before m (whose cleanup was registered first).
func ServeListeners(t testing.TB, h *listen.Host, m *poolmgr.Manager) {
	t.Helper()
	h.SetPools(m)
	t.Cleanup(h.Close)
}

// ManagerServing is Manager with the default store options and a host
// serving the pools' local listeners, closed at the test's cleanup before
// the Manager.
//
// mod, when set, changes the Manager's config first.
func ManagerServing(t testing.TB, logger *slog.Logger, mod func(*poolmgr.ManagerConfig)) (*poolmgr.Manager, *listen.Host) {
	t.Helper()
	h := Listeners(t, logger)
	m := Manager(t, store.Options{}, logger, func(mc *poolmgr.ManagerConfig) {
		mc.Listeners = h
		if mod != nil {
			mod(mc)
		}
	})
	ServeListeners(t, h, m)
	return m, h
}

// StoreOptions are the store options of ManagerServing, for a test that
// builds its own host.
func StoreOptions() store.Options { return store.Options{} }

// OpenStore opens the bbolt store at path with the default options, for a
// test that stops and starts a Manager over the same store.
func OpenStore(path string) (*store.Store, error) { return store.Open(path, store.Options{}) }
