package poolmgr

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/poolplane/poolplane/store"
)

// ApplyOptions go with Apply.
type ApplyOptions struct {
	// Actor names who made the change; it is recorded in history.
	Actor string
	// Prune deletes stored pools that are not in the wanted set.
	Prune bool
	// ValidateOnly computes and returns the plan without writing anything.
	ValidateOnly bool
}

// PoolSpec is one wanted pool in Apply.
type PoolSpec struct {
	ID     string
	Config Config
}

// PlannedAction is what Apply does (or, with ValidateOnly, would do) to one pool.
type PlannedAction struct {
	ID     string
	Action Action
	// ChangedFields are the API paths of the fields an UPDATE changes.
	ChangedFields []string
	// Retired counts the connections the change recycles: for an UPDATE,
	// those Pool.Plan reports (endpoint/TLS changes, smaller limits); for a
	// DELETE, every idle and leased connection of the pool. Leased ones are
	// closed on release, never cut.
	Retired Retired
}

// Plan is the result of Apply.
type Plan struct {
	// Revision is the store revision of the committed change; if nothing
	// was written (all UNCHANGED, or ValidateOnly), the revision the plan
	// was computed at.
	Revision int64
	// Actions has one entry per wanted pool, plus one DELETE per pruned
	// pool, sorted by ID.
	Actions []PlannedAction
}

// Apply makes the stored pools match want, atomically. It validates every
// spec (one *ValidationError with fields prefixed "pools[i]."), plans one
// action per pool (CREATE, UPDATE, UNCHANGED, and with o.Prune DELETE for
// stored pools not wanted), commits every write in one store transaction,
// and then applies the changes to the live pools. States are kept:
// Apply changes configs only. A stored pool's spec that gives its stored
// client certificate but no client key or key file keeps the stored key,
// so that pools read back (which never carry the key) apply unchanged.
//
// Each write in the transaction expects the revision the plan was computed
// from, so a pool changed concurrently aborts the whole Apply with an error
// matching ErrRevisionMismatch and nothing is written. If nothing changes,
// nothing is written. With o.ValidateOnly the plan is returned unapplied.
// A stored record that does not decode fails the Apply (Delete repairs it).
// Errors of live pools after the commit are returned joined, with the plan.
func (m *Manager) Apply(ctx context.Context, want []PoolSpec, o ApplyOptions) (Plan, error) {
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return Plan{}, err
	}
	defer unlock()

	kvs, rev, err := m.store.Snapshot(ctx, keyPrefix)
	if err != nil {
		return Plan{}, fmt.Errorf("apply: %w", mapStoreErr("", err))
	}
	type current struct {
		rec record
		kv  store.KeyValue
	}
	cur := make(map[string]current, len(kvs))
	for _, kv := range kvs {
		id := strings.TrimPrefix(kv.Key, keyPrefix)
		rec, err := decodeRecord(kv.Value, m.sealer)
		if err != nil {
			return Plan{}, fmt.Errorf("apply: stored pool %s: %w", id, err)
		}
		cur[id] = current{rec, kv}
	}
	// A spec that omits the client key or the Redis or PostgreSQL password
	// keeps the stored one (see keepStoredKey); then every spec is
	// validated.
	want = slices.Clone(want)
	for i := range want {
		if c, ok := cur[want[i].ID]; ok {
			keepStoredKey(c.rec.Config, &want[i].Config, true, true, true)
		}
	}
	specs, err := prepareSpecs(want)
	if err != nil {
		return Plan{}, err
	}

	type change struct {
		id      string
		action  Action
		rec     record
		created int64 // CreateRevision of an updated pool
	}
	var (
		plan    = Plan{Revision: rev}
		ops     []store.Op
		changes []change
		now     = m.now()
	)
	specIndex := make(map[string]int, len(specs))
	for si, s := range specs {
		specIndex[s.ID] = si
		c, ok := cur[s.ID]
		if !ok {
			if err := m.checkWrite(s.Config, fmt.Sprintf("pools[%d].", si)); err != nil {
				return Plan{}, err
			}
			rec := record{Config: s.Config, State: StateActive, CreateTime: now, UpdateTime: now, Op: ActionCreate}
			val, err := encodeRecord(rec, m.sealer)
			if err != nil {
				return Plan{}, err
			}
			ops = append(ops, store.Op{Kind: store.OpPut, Key: poolKey(s.ID), Value: val, Expect: store.Absent()})
			changes = append(changes, change{id: s.ID, action: ActionCreate, rec: rec})
			plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionCreate})
			continue
		}
		// Compare effective configs: a field written out at its default
		// value is no change, and a default that follows another field
		// shows as changed with it.
		diff := c.rec.Config.WithDefaults().DiffFields(s.Config.WithDefaults())
		if len(diff) == 0 {
			plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionUnchanged})
			continue
		}
		if err := m.checkWrite(s.Config, fmt.Sprintf("pools[%d].", si)); err != nil {
			return Plan{}, err
		}
		var retired Retired
		if p := m.lookup(s.ID); p != nil {
			retired = p.Plan(s.Config.WithDefaults())
		}
		rec := c.rec
		rec.Config, rec.UpdateTime, rec.Op = s.Config, now, ActionUpdate
		val, err := encodeRecord(rec, m.sealer)
		if err != nil {
			return Plan{}, err
		}
		ops = append(ops, store.Op{Kind: store.OpPut, Key: poolKey(s.ID), Value: val, Expect: store.AtRevision(c.kv.ModRevision)})
		changes = append(changes, change{id: s.ID, action: ActionUpdate, rec: rec, created: c.kv.CreateRevision})
		plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionUpdate, ChangedFields: diff, Retired: retired})
	}
	if o.Prune {
		wanted := make(map[string]bool, len(specs))
		for _, s := range specs {
			wanted[s.ID] = true
		}
		for _, kv := range kvs {
			id := strings.TrimPrefix(kv.Key, keyPrefix)
			if wanted[id] {
				continue
			}
			var retired Retired
			if p := m.lookup(id); p != nil {
				st := p.Stats()
				retired = Retired{Idle: st.Idle, Leased: st.InUse}
			}
			ops = append(ops, store.Op{Kind: store.OpDelete, Key: kv.Key, Expect: store.AtRevision(kv.ModRevision)})
			changes = append(changes, change{id: id, action: ActionDelete})
			plan.Actions = append(plan.Actions, PlannedAction{ID: id, Action: ActionDelete, Retired: retired})
		}
	}
	slices.SortFunc(plan.Actions, func(a, b PlannedAction) int { return cmp.Compare(a.ID, b.ID) })
	// Listeners first: one that cannot be opened fails the Apply before
	// anything is committed.
	for _, c := range changes {
		if c.action == ActionDelete {
			continue
		}
		abort, err := m.prepareListeners(c.id, c.rec.Config, fmt.Sprintf("pools[%d].", specIndex[c.id]))
		if err != nil {
			return Plan{}, err
		}
		defer abort()
	}
	if o.ValidateOnly || len(ops) == 0 {
		return plan, nil
	}

	rev, err = m.store.Txn(ctx, ops, o.Actor)
	if err != nil {
		var rm *store.RevisionMismatchError
		switch {
		case errors.As(err, &rm):
			return Plan{}, fmt.Errorf("apply: pool changed concurrently: %w", mapStoreErr(strings.TrimPrefix(rm.Key, keyPrefix), err))
		case errors.Is(err, store.ErrExists):
			return Plan{}, fmt.Errorf("apply: pool created concurrently: %w: %w", ErrRevisionMismatch, err)
		case errors.Is(err, store.ErrNotFound):
			return Plan{}, fmt.Errorf("apply: pool deleted concurrently: %w: %w", ErrRevisionMismatch, err)
		}
		return Plan{}, fmt.Errorf("apply: %w", mapStoreErr("", err))
	}
	plan.Revision = rev

	var errs []error
	for _, c := range changes {
		m.markApplied(c.id, rev)
		var err error
		switch c.action {
		case ActionCreate, ActionUpdate:
			err = m.applyLive(c.id, c.rec, true, false)
		case ActionDelete:
			m.stopPool(c.id)
		}
		if err != nil {
			errs = append(errs, liveErr(c.id, rev, err))
		}
	}
	return plan, errors.Join(errs...)
}

// prepareSpecs validates every spec of Apply and returns them with defaults
// filled in; violations of spec i are prefixed "pools[i].".
func prepareSpecs(want []PoolSpec) ([]PoolSpec, error) {
	var vs []FieldViolation
	out := make([]PoolSpec, len(want))
	seen := make(map[string]int, len(want))
	for i, s := range want {
		prefix := fmt.Sprintf("pools[%d].", i)
		var verr *ValidationError
		if err := ValidatePoolID(s.ID); errors.As(err, &verr) {
			for _, v := range verr.Violations {
				vs = append(vs, FieldViolation{Field: prefix + v.Field, Reason: v.Reason})
			}
		} else if j, dup := seen[s.ID]; dup {
			vs = append(vs, FieldViolation{Field: prefix + "name", Reason: fmt.Sprintf("pool %q is also pools[%d]", s.ID, j)})
		} else {
			seen[s.ID] = i
		}
		cfg, err := prepare(s.Config)
		if errors.As(err, &verr) {
			for _, v := range verr.Violations {
				vs = append(vs, FieldViolation{Field: prefix + v.Field, Reason: v.Reason})
			}
		} else if err != nil {
			return nil, err
		}
		out[i] = PoolSpec{ID: s.ID, Config: cfg}
	}
	if len(vs) > 0 {
		return nil, &ValidationError{Violations: vs}
	}
	return out, nil
}
