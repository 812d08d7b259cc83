package poolmgr

import "errors"

// ListenerHost opens and closes the local listeners that pools are served
// on (Config.Listeners) on this process's host. poold gives one; without
// it listeners are stored and shown but opened nowhere. Its methods are
// called with the Manager's write lock held, in store order, and must be
// safe for concurrent use with Status.
type ListenerHost interface {
	// Prepare opens the listeners of want that pool id does not hold yet,
	// without serving them, so that a write whose listener cannot be
	// opened fails before it is committed. It returns a *ValidationError
	// naming the address when one cannot be opened or another pool holds
	// it. The next Sync of id adopts what Prepare opened; abort closes
	// whatever Sync did not adopt, and is called once in every case.
	Prepare(id string, want []Listener) (abort func(), err error)
	// Sync brings pool id's listeners to want: it serves those wanted
	// (opening any Prepare did not), and closes the others; connections
	// already accepted go on. A listener that cannot be opened is reported
	// by Status, not returned: Sync also applies changes no Prepare of
	// this process checked (Load, a replica following a change).
	Sync(id string, want []Listener)
	// Status reports pool id's listeners on this host, in the order of
	// the last Sync's want.
	Status(id string) []ListenerStatus
}

// ListenerStatus is the state of one of a pool's listeners on this host.
type ListenerStatus struct {
	// Address is as configured.
	Address string
	// Bound is the address bound (the port chosen for port 0); empty when
	// the listener is not open.
	Bound string
	// Err says why the listener is not open; empty when it is.
	Err string
	// Accepted and Refused count connections since the listener opened;
	// refused ones were accepted and told the pool could not lease.
	Accepted, Refused uint64
	// Active is the number of connections being served.
	Active int
}

// prepareListeners runs the ListenerHost's Prepare for a write about to be
// committed; the returned abort is never nil. The caller holds wsem.
func (m *Manager) prepareListeners(id string, cfg Config, prefix string) (abort func(), err error) {
	if m.listeners == nil {
		return func() {}, nil
	}
	abort, err = m.listeners.Prepare(id, cfg.Listeners)
	if err != nil {
		return func() {}, prefixViolations(err, prefix)
	}
	return abort, nil
}

// syncListeners brings pool id's listeners to cfg's (none when cfg is
// nil: the pool is gone). The caller holds wsem.
func (m *Manager) syncListeners(id string, cfg *Config) {
	if m.listeners == nil {
		return
	}
	var want []Listener
	if cfg != nil {
		want = cfg.Listeners
	}
	m.listeners.Sync(id, want)
}

// ListenerStatus reports pool id's listeners on this host; nil without a
// ListenerHost or listeners.
func (m *Manager) ListenerStatus(id string) []ListenerStatus {
	if m.listeners == nil {
		return nil
	}
	return m.listeners.Status(id)
}

// prefixViolations prefixes the fields of a *ValidationError err with
// prefix ("pools[3]." in Apply); other errors are returned as they are.
func prefixViolations(err error, prefix string) error {
	var ve *ValidationError
	if prefix == "" || !errors.As(err, &ve) {
		return err
	}
	vs := make([]FieldViolation, len(ve.Violations))
	for i, v := range ve.Violations {
		vs[i] = FieldViolation{Field: prefix + v.Field, Reason: v.Reason}
	}
	return &ValidationError{Violations: vs}
}
