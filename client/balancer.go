package client

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/connectivity"
	_ "google.golang.org/grpc/health" // client-side health checking of replicas
	"google.golang.org/grpc/serviceconfig"
)

// Leases are balanced per lease, not per stream. A released stream stays
// warm on the replica it was opened on, so a round_robin balancer, which
// only places new streams, would leave a steady client leasing from the
// replicas its first streams landed on. The SDK therefore runs its own
// balancer, lbName, over the ready (and, by health checking, serving)
// replicas, and decides per lease: the Client picks the next replica in
// turn from the ready set the balancer publishes, takes a warm stream of
// that replica, or opens a new stream with a pick hint in its context that
// the balancer's picker honours. A lease retried after a replica refused it
// hints that replica as the one to avoid.

// lbName is the name of the SDK's balancer.
const lbName = "poolplane_lease"

func init() { balancer.Register(leaseBalancerBuilder{}) }

// serviceConfig selects the SDK's balancer for the Client with id, and
// health checks every replica's process-wide health service ("").
func serviceConfig(id uint64) string {
	return fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"client":%d}}],"healthCheckConfig":{"serviceName":""}}`, lbName, id)
}

// replicaSets holds the replicaSet of every open Client by id: the
// balancer finds its Client's set through the id in its config.
var (
	replicaSets  sync.Map // uint64 -> *replicaSet
	replicaSetID atomic.Uint64
)

// replicaSet is what a Client knows of its replicas: the addresses the
// balancer last saw ready, and a turn counter. Safe for concurrent use.
type replicaSet struct {
	next atomic.Uint32

	ready atomic.Pointer[[]string] // sorted; replaced, never changed in place
}

// newReplicaSet registers a replicaSet and returns it with its id; drop
// unregisters it.
func newReplicaSet() (*replicaSet, uint64) {
	id := replicaSetID.Add(1)
	r := &replicaSet{}
	replicaSets.Store(id, r)
	return r, id
}

func dropReplicaSet(id uint64) { replicaSets.Delete(id) }

func (r *replicaSet) setReady(addrs []string) {
	r.ready.Store(&addrs)
}

// pick returns the replica whose turn it is, skipping avoid unless it is
// the only one ready, or "" when none is known to be ready (the balancer
// then picks on its own).
func (r *replicaSet) pick(avoid string) string {
	if r == nil {
		return ""
	}
	var ready []string
	if p := r.ready.Load(); p != nil {
		ready = *p
	}
	return pickFrom(ready, &r.next, avoid)
}

// pickFrom returns the next of addrs in turn, skipping avoid when another
// is there. A pick that avoids a replica (a retry) does not take a turn,
// so retries do not skew the turns of first tries.
func pickFrom(addrs []string, next *atomic.Uint32, avoid string) string {
	n := len(addrs)
	switch n {
	case 0:
		return ""
	case 1:
		return addrs[0]
	}
	turn := next.Load()
	if avoid == "" {
		turn = next.Add(1)
	}
	start := int(turn % uint32(n))
	for k := range n {
		if a := addrs[(start+k)%n]; a != avoid {
			return a
		}
	}
	return addrs[start]
}

// pickHint travels in a new stream's context to the picker: want names
// the replica to place the stream on, avoid one to place it elsewhere if
// possible. The picker records where it placed the stream in got.
type pickHint struct {
	want, avoid string
	got         atomic.Pointer[string]
}

type pickHintKey struct{}

func withPickHint(ctx context.Context, h *pickHint) context.Context {
	return context.WithValue(ctx, pickHintKey{}, h)
}

// addr returns the replica the stream was placed on, or "" when the SDK's
// balancer was not used.
func (h *pickHint) addr() string {
	if a := h.got.Load(); a != nil {
		return *a
	}
	return ""
}

// lbConfig is the balancer's configuration: the id of its Client's
// replicaSet.
type lbConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	Client                            uint64 `json:"client"`
}

type leaseBalancerBuilder struct{}

func (leaseBalancerBuilder) Name() string { return lbName }

func (leaseBalancerBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &lbConfig{}
	if err := json.Unmarshal(js, cfg); err != nil {
		return nil, fmt.Errorf("client: %s config: %w", lbName, err)
	}
	return cfg, nil
}

// Build returns grpc's base balancer (a SubConn per address, health
// checked) with a picker builder of its own.
func (leaseBalancerBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	pb := &pickerBuilder{}
	return &leaseBalancer{
		Balancer: base.NewBalancerBuilder(lbName, pb, base.Config{HealthCheck: true}).Build(lbClientConn{cc, pb}, opts),
		pb:       pb,
	}
}

// lbClientConn publishes the ready replicas to the Client as each picker
// is installed: once it is, so that a lease never names a replica the
// installed picker does not know yet (the picker would then place the
// stream on another, possibly the one a retry avoids). When the channel is
// not ready, the base balancer installs an error picker without building
// one, and no replica is ready.
//
// The first picker after such a state is the exception: it is published
// first. The error picker it replaces holds RPCs back or fails them, and
// knows no replica either, so nothing is placed against a lease's wish;
// published after, the streams the new picker lets through could carry a
// lease to its end before the Client knew any replica ready, and the next
// lease would then miss the warm stream, which is filed under its
// replica, and open another.
type lbClientConn struct {
	balancer.ClientConn
	pb *pickerBuilder
}

func (cc lbClientConn) UpdateState(s balancer.State) {
	p, ok := s.Picker.(*picker)
	if s.ConnectivityState != connectivity.Ready || !ok {
		cc.pb.set.setReadyIfAny(nil)
		cc.ClientConn.UpdateState(s)
		return
	}
	addrs := slices.Clone(p.addrs)
	if cc.pb.set.noneReady() {
		cc.pb.set.setReadyIfAny(addrs)
		cc.ClientConn.UpdateState(s)
		return
	}
	cc.ClientConn.UpdateState(s)
	cc.pb.set.setReadyIfAny(addrs)
}

// leaseBalancer hands its Client's replicaSet to the picker builder. gRPC
// calls a balancer's methods one at a time, so pb.set needs no lock.
type leaseBalancer struct {
	balancer.Balancer
	pb *pickerBuilder
}

func (b *leaseBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	if cfg, ok := s.BalancerConfig.(*lbConfig); ok && b.pb.set == nil {
		if r, ok := replicaSets.Load(cfg.Client); ok {
			b.pb.set = r.(*replicaSet)
		}
	}
	return b.Balancer.UpdateClientConnState(s)
}

func (b *leaseBalancer) Close() {
	b.pb.set.setReadyIfAny(nil)
	b.Balancer.Close()
}

// noneReady reports whether no replica is known ready (true for a nil set).
func (r *replicaSet) noneReady() bool {
	if r == nil {
		return true
	}
	p := r.ready.Load()
	return p == nil || len(*p) == 0
}

func (r *replicaSet) setReadyIfAny(addrs []string) {
	if r != nil {
		r.setReady(addrs)
	}
}

// pickerBuilder builds a picker over the ready SubConns at every change;
// lbClientConn publishes their addresses to the Client.
type pickerBuilder struct {
	set  *replicaSet // nil until the config names it
	next atomic.Uint32
}

func (pb *pickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	type ready struct {
		addr string
		sc   balancer.SubConn
	}
	rs := make([]ready, 0, len(info.ReadySCs))
	for sc, sci := range info.ReadySCs {
		rs = append(rs, ready{sci.Address.Addr, sc})
	}
	slices.SortFunc(rs, func(a, b ready) int { return cmp.Compare(a.addr, b.addr) })
	p := &picker{next: &pb.next}
	for _, r := range rs {
		p.addrs = append(p.addrs, r.addr)
		p.scs = append(p.scs, r.sc)
	}
	if len(rs) == 0 {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable)
	}
	return p
}

// picker places a stream on the replica its hint wants when that one is
// ready, else on the next ready replica in turn, skipping the one its hint
// avoids.
type picker struct {
	addrs []string // sorted
	scs   []balancer.SubConn
	next  *atomic.Uint32
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	h, _ := info.Ctx.Value(pickHintKey{}).(*pickHint)
	i := -1
	if h != nil && h.want != "" {
		i = slices.Index(p.addrs, h.want)
	}
	if i < 0 {
		avoid := ""
		if h != nil {
			avoid = h.avoid
		}
		i = slices.Index(p.addrs, pickFrom(p.addrs, p.next, avoid))
	}
	if h != nil {
		h.got.Store(&p.addrs[i])
	}
	return balancer.PickResult{SubConn: p.scs[i]}, nil
}
