package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// adminCore is what AdminServer needs from the pool registry;
// *poolmgr.Manager implements it.
type adminCore interface {
	Create(ctx context.Context, id string, cfg poolmgr.Config, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Get(ctx context.Context, id string) (poolmgr.PoolInfo, error)
	List(ctx context.Context, pageSize int, pageToken string) ([]poolmgr.PoolInfo, string, error)
	Update(ctx context.Context, id string, cfg poolmgr.Config, expectRevision int64, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Delete(ctx context.Context, id string, expectRevision int64, o poolmgr.WriteOptions) error
	Apply(ctx context.Context, want []poolmgr.PoolSpec, o poolmgr.ApplyOptions) (poolmgr.Plan, error)
	History(ctx context.Context, id string) ([]poolmgr.Revision, error)
	Rollback(ctx context.Context, id string, toRevision int64, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Drain(ctx context.Context, id string, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Pause(ctx context.Context, id string, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Resume(ctx context.Context, id string, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Reconnect(ctx context.Context, id string, o poolmgr.WriteOptions) (poolmgr.PoolInfo, error)
	Leases(ctx context.Context, id string) ([]poolmgr.LeaseInfo, error)
	RevokeLease(ctx context.Context, leaseID string) error
	Watch(ctx context.Context, fromRevision int64) (<-chan poolmgr.PoolEvent, error)
	Backup(ctx context.Context, w io.Writer) (int64, error)
	CurrentRevision(ctx context.Context) (int64, error)
	ReplicaSet() poolmgr.ReplicaSet
}

var _ adminCore = (*poolmgr.Manager)(nil)

// AdminServer implements poolv1.PoolAdminServiceServer over a
// poolmgr.Manager: each method validates the request, calls the Manager,
// maps its error with toStatus and converts the result. Its methods are
// safe for concurrent use (the Manager serialises writes).
type AdminServer struct {
	poolv1.UnimplementedPoolAdminServiceServer

	core adminCore
}

var _ poolv1.PoolAdminServiceServer = (*AdminServer)(nil)

// NewAdminServer returns an AdminServer over m.
func NewAdminServer(m *poolmgr.Manager) *AdminServer {
	return &AdminServer{core: m}
}

// Page sizes (AIP-158).
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// maxUpdateRetries bounds the read-merge-write retries of an UpdatePool
// without an etag whose pool changed between the read and the write.
const maxUpdateRetries = 3

// CreatePool creates a pool. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) CreatePool(ctx context.Context, req *poolv1.CreatePoolRequest) (*poolv1.Pool, error) {
	id, cfg, err := validateCreatePoolRequest(req)
	if err != nil {
		return nil, toStatus(err)
	}
	info, err := s.core.Create(ctx, id, cfg, s.writeOptions(ctx, req.GetValidateOnly()))
	if err != nil {
		return nil, toStatus(prefixErr("pool.", err))
	}
	return poolToProto(info), nil
}

// GetPool returns a pool. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) GetPool(ctx context.Context, req *poolv1.GetPoolRequest) (*poolv1.Pool, error) {
	id, err := parsePoolName(req.GetName())
	if err != nil {
		return nil, err
	}
	info, err := s.core.Get(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	return poolToProto(info), nil
}

// ListPools lists pools in name order. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) ListPools(ctx context.Context, req *poolv1.ListPoolsRequest) (*poolv1.ListPoolsResponse, error) {
	size, err := validatePageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	infos, next, err := s.core.List(ctx, size, req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &poolv1.ListPoolsResponse{Pools: make([]*poolv1.Pool, 0, len(infos)), NextPageToken: next}
	for _, info := range infos {
		out.Pools = append(out.Pools, poolToProto(info))
	}
	return out, nil
}

// UpdatePool updates the fields named in the update mask. Without an etag,
// a pool changed between the read and the write is merged again (up to
// maxUpdateRetries times); with one, the change is conditional on it. See
// poolv1.PoolAdminServiceServer.
func (s *AdminServer) UpdatePool(ctx context.Context, req *poolv1.UpdatePoolRequest) (*poolv1.Pool, error) {
	id, src, mask, etag, err := validateUpdatePoolRequest(req)
	if err != nil {
		return nil, toStatus(err)
	}
	o := s.writeOptions(ctx, req.GetValidateOnly())
	// A key included only implicitly ("*", no mask, "tls") and left empty
	// keeps the stored key when the certificate is the stored one; an
	// explicit "tls.client_key_pem" clears it.
	o.KeepClientKey = mask.leaves[keyPath] && mask.keyImplicit
	// The Redis password likewise: "*", no mask or "redis" with an empty
	// password and the stored username keeps it; an explicit
	// "redis.password" clears it.
	o.KeepRedisPassword = mask.leaves[passwordPath] && mask.passwordImplicit
	// And the PostgreSQL password, with the stored user.
	o.KeepPostgresPassword = mask.leaves[pgPasswordPath] && mask.pgPasswordImplicit
	for attempt := 0; ; attempt++ {
		cur, err := s.core.Get(ctx, id)
		if err != nil {
			return nil, toStatus(err)
		}
		expect := etag
		if expect == 0 {
			expect = cur.Revision
		}
		info, err := s.core.Update(ctx, id, mergeConfig(cur.Spec, src, mask), expect, o)
		if err != nil && etag == 0 && attempt < maxUpdateRetries && errors.Is(err, poolmgr.ErrRevisionMismatch) {
			continue
		}
		if err != nil {
			return nil, toStatus(prefixErr("pool.", err))
		}
		return poolToProto(info), nil
	}
}

// DeletePool deletes a pool. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) DeletePool(ctx context.Context, req *poolv1.DeletePoolRequest) (*emptypb.Empty, error) {
	id, err := parsePoolName(req.GetName())
	if err != nil {
		return nil, err
	}
	rev, err := parseEtag("etag", req.GetEtag())
	if err != nil {
		return nil, err
	}
	if err := s.core.Delete(ctx, id, rev, s.writeOptions(ctx, req.GetValidateOnly())); err != nil {
		return nil, toStatus(err)
	}
	return &emptypb.Empty{}, nil
}

// ApplyPools makes the stored pools match the request, atomically, and
// returns the plan. A pool given with a client certificate but no key
// keeps its stored key when the certificate is unchanged (the core's rule,
// under its write lock), so that pools read back (which never carry the
// key) apply unchanged. See
// poolv1.PoolAdminServiceServer.
func (s *AdminServer) ApplyPools(ctx context.Context, req *poolv1.ApplyPoolsRequest) (*poolv1.ApplyPoolsResponse, error) {
	specs, err := validateApplyPoolsRequest(req)
	if err != nil {
		return nil, toStatus(err)
	}
	plan, err := s.core.Apply(ctx, specs, poolmgr.ApplyOptions{
		Actor:        actorFromContext(ctx),
		Prune:        req.GetPrune(),
		ValidateOnly: req.GetValidateOnly(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	written := false
	if !req.GetValidateOnly() {
		for _, a := range plan.Actions {
			written = written || a.Action != poolmgr.ActionUnchanged
		}
	}
	return planToProto(plan, written), nil
}

// ListPoolRevisions lists a pool's retained versions, newest first. See
// poolv1.PoolAdminServiceServer.
func (s *AdminServer) ListPoolRevisions(ctx context.Context, req *poolv1.ListPoolRevisionsRequest) (*poolv1.ListPoolRevisionsResponse, error) {
	id, size, before, err := validateListPoolRevisionsRequest(req)
	if err != nil {
		return nil, err
	}
	revs, err := s.core.History(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &poolv1.ListPoolRevisionsResponse{}
	for i := len(revs) - 1; i >= 0; i-- { // History is oldest first
		r := revs[i]
		if before != 0 && r.Revision >= before {
			continue
		}
		if len(out.Revisions) == size {
			out.NextPageToken = revisionPageToken(out.Revisions[size-1].GetRevision())
			break
		}
		out.Revisions = append(out.Revisions, revisionToProto(id, r))
	}
	return out, nil
}

// RollbackPool restores a pool's configuration from an earlier revision.
// See poolv1.PoolAdminServiceServer.
func (s *AdminServer) RollbackPool(ctx context.Context, req *poolv1.RollbackPoolRequest) (*poolv1.Pool, error) {
	id, err := parsePoolName(req.GetName())
	if err != nil {
		return nil, err
	}
	if req.GetRevision() <= 0 {
		return nil, invalidArgument("revision", "required: a revision from ListPoolRevisions")
	}
	info, err := s.core.Rollback(ctx, id, req.GetRevision(), s.writeOptions(ctx, false))
	if err != nil {
		return nil, toStatus(err)
	}
	return poolToProto(info), nil
}

// DrainPool drains a pool. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) DrainPool(ctx context.Context, req *poolv1.DrainPoolRequest) (*poolv1.Pool, error) {
	return s.lifecycle(ctx, req.GetName(), s.core.Drain)
}

// PausePool pauses a pool. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) PausePool(ctx context.Context, req *poolv1.PausePoolRequest) (*poolv1.Pool, error) {
	return s.lifecycle(ctx, req.GetName(), s.core.Pause)
}

// ResumePool ends a pause or a drain. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) ResumePool(ctx context.Context, req *poolv1.ResumePoolRequest) (*poolv1.Pool, error) {
	return s.lifecycle(ctx, req.GetName(), s.core.Resume)
}

// ReconnectPool recycles every connection of a pool. See
// poolv1.PoolAdminServiceServer.
func (s *AdminServer) ReconnectPool(ctx context.Context, req *poolv1.ReconnectPoolRequest) (*poolv1.Pool, error) {
	return s.lifecycle(ctx, req.GetName(), s.core.Reconnect)
}

func (s *AdminServer) lifecycle(ctx context.Context, name string,
	op func(context.Context, string, poolmgr.WriteOptions) (poolmgr.PoolInfo, error)) (*poolv1.Pool, error) {
	id, err := parsePoolName(name)
	if err != nil {
		return nil, err
	}
	info, err := op(ctx, id, s.writeOptions(ctx, false))
	if err != nil {
		return nil, toStatus(err)
	}
	return poolToProto(info), nil
}

// ListLeases lists active leases. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) ListLeases(ctx context.Context, req *poolv1.ListLeasesRequest) (*poolv1.ListLeasesResponse, error) {
	id, err := validateListLeasesRequest(req)
	if err != nil {
		return nil, err
	}
	ls, err := s.core.Leases(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	now := time.Now()
	out := &poolv1.ListLeasesResponse{Leases: make([]*poolv1.LeaseInfo, 0, len(ls))}
	for _, l := range ls {
		out.Leases = append(out.Leases, leaseToProto(l, now))
	}
	return out, nil
}

// ListReplicas lists the replicas sharing the configuration. See
// poolv1.PoolAdminServiceServer.
func (s *AdminServer) ListReplicas(context.Context, *poolv1.ListReplicasRequest) (*poolv1.ListReplicasResponse, error) {
	return replicaSetToProto(s.core.ReplicaSet()), nil
}

// RevokeLease ends a lease. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) RevokeLease(ctx context.Context, req *poolv1.RevokeLeaseRequest) (*emptypb.Empty, error) {
	poolID, leaseID, err := parseLeaseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if !leaseOfPool(poolID, leaseID) {
		return nil, toStatus(fmt.Errorf("pool %s: lease %s: %w", poolID, leaseID, poolmgr.ErrLeaseNotFound))
	}
	if err := s.core.RevokeLease(ctx, leaseID); err != nil {
		return nil, toStatus(err)
	}
	return &emptypb.Empty{}, nil
}

// leaseOfPool reports whether leaseID, "<pool>-<instance>-<n>" as
// poolmgr.LeaseInfo.ID documents it, belongs to pool poolID.
func leaseOfPool(poolID, leaseID string) bool {
	rest, ok := strings.CutPrefix(leaseID, poolID+"-")
	return ok && strings.Count(rest, "-") == 1
}

// maxWatchRestarts bounds how often WatchPools resumes a core watch that
// ended without delivering anything.
const maxWatchRestarts = 3

// WatchPools streams configuration changes. See poolv1.PoolAdminServiceServer.
func (s *AdminServer) WatchPools(req *poolv1.WatchPoolsRequest, stream grpc.ServerStreamingServer[poolv1.WatchPoolsResponse]) error {
	ctx := stream.Context()
	from := req.GetStartRevision()
	if from < 0 {
		return invalidArgument("start_revision", "must not be negative")
	}
	if from == 0 {
		rev, err := s.core.CurrentRevision(ctx)
		if err != nil {
			return toStatus(err)
		}
		from = rev
	}
	restarts := 0
	for {
		events, err := s.core.Watch(ctx, from)
		if err != nil {
			return watchStatus(from, err)
		}
		delivered := false
		for ev := range events {
			if err := stream.Send(eventToProto(ev)); err != nil {
				return err
			}
			from, delivered = ev.Revision, true
		}
		// The core closed the channel: ctx ended, the Manager is closing,
		// or this watcher fell behind. Resume from the last revision sent;
		// the new Watch reports why it cannot.
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		if delivered {
			restarts = 0
		} else if restarts++; restarts > maxWatchRestarts {
			return status.Error(codes.Unavailable, "watch ended; watch again")
		}
	}
}

// watchStatus maps a Watch error: a revision no longer retained
// (ErrCompacted) is OUT_OF_RANGE, reason REVISION_COMPACTED.
func watchStatus(_ int64, err error) error {
	return toStatus(err)
}

func (s *AdminServer) writeOptions(ctx context.Context, validateOnly bool) poolmgr.WriteOptions {
	return poolmgr.WriteOptions{Actor: actorFromContext(ctx), ValidateOnly: validateOnly}
}

// Validators. Each returns an InvalidArgument status or a
// *poolmgr.ValidationError (which toStatus maps to InvalidArgument with a
// BadRequest), naming fields by their path in the request.

// validatePageSize checks page_size (0..1000) and applies the default.
func validatePageSize(n int32) (int, error) {
	if n < 0 || n > maxPageSize {
		return 0, invalidArgument("page_size", fmt.Sprintf("must be between 0 and %d, got %d", maxPageSize, n))
	}
	if n == 0 {
		return defaultPageSize, nil
	}
	return int(n), nil
}

// validateCreatePoolRequest returns the pool ID and the config to create.
func validateCreatePoolRequest(req *poolv1.CreatePoolRequest) (string, poolmgr.Config, error) {
	id, err := parsePoolID("pool_id", req.GetPoolId())
	if err != nil {
		return "", poolmgr.Config{}, err
	}
	if req.GetPool() == nil {
		return "", poolmgr.Config{}, invalidArgument("pool", "required")
	}
	cfg, vs := configFromProto(req.GetPool())
	if err := prefixed("pool.", vs); err != nil {
		return "", poolmgr.Config{}, err
	}
	return id, cfg, nil
}

// validateUpdatePoolRequest returns the pool ID, the converted pool, the
// resolved mask and the etag's revision (0 for none). Conversion errors of
// fields outside the mask are ignored, as those fields are.
func validateUpdatePoolRequest(req *poolv1.UpdatePoolRequest) (string, poolmgr.Config, updateMask, int64, error) {
	p := req.GetPool()
	if p == nil {
		return "", poolmgr.Config{}, updateMask{}, 0, invalidArgument("pool", "required")
	}
	id, err := parsePoolNameField("pool.name", p.GetName())
	if err != nil {
		return "", poolmgr.Config{}, updateMask{}, 0, err
	}
	etag, err := parseEtag("pool.etag", p.GetEtag())
	if err != nil {
		return "", poolmgr.Config{}, updateMask{}, 0, err
	}
	mask, err := validateUpdateMask(req.GetUpdateMask().GetPaths())
	if err != nil {
		return "", poolmgr.Config{}, updateMask{}, 0, err
	}
	cfg, vs := configFromProto(p)
	var masked []poolmgr.FieldViolation
	for _, v := range vs {
		if mask.covers(v.Field) {
			masked = append(masked, v)
		}
	}
	if err := prefixed("pool.", masked); err != nil {
		return "", poolmgr.Config{}, updateMask{}, 0, err
	}
	return id, cfg, mask, etag, nil
}

// validateApplyPoolsRequest converts every wanted pool; each must be named
// "pools/{pool}". Violations are reported all at once, as
// "pools[i].<field>".
func validateApplyPoolsRequest(req *poolv1.ApplyPoolsRequest) ([]poolmgr.PoolSpec, error) {
	var vs []poolmgr.FieldViolation
	specs := make([]poolmgr.PoolSpec, 0, len(req.GetPools()))
	for i, p := range req.GetPools() {
		prefix := fmt.Sprintf("pools[%d].", i)
		id, err := parsePoolNameField(prefix+"name", p.GetName())
		if err != nil {
			vs = append(vs, poolmgr.FieldViolation{Field: prefix + "name", Reason: statusReason(err)})
		}
		cfg, cvs := configFromProto(p)
		for _, v := range cvs {
			vs = append(vs, poolmgr.FieldViolation{Field: prefix + v.Field, Reason: v.Reason})
		}
		specs = append(specs, poolmgr.PoolSpec{ID: id, Config: cfg})
	}
	if len(vs) > 0 {
		return nil, &poolmgr.ValidationError{Violations: vs}
	}
	return specs, nil
}

// validateListPoolRevisionsRequest returns the pool ID, the page size and
// the revision the page starts below (0: from the newest).
func validateListPoolRevisionsRequest(req *poolv1.ListPoolRevisionsRequest) (id string, size int, before int64, err error) {
	if id, err = parsePoolName(req.GetName()); err != nil {
		return "", 0, 0, err
	}
	if size, err = validatePageSize(req.GetPageSize()); err != nil {
		return "", 0, 0, err
	}
	if before, err = parseRevisionPageToken(req.GetPageToken()); err != nil {
		return "", 0, 0, err
	}
	return id, size, before, nil
}

// validateListLeasesRequest returns the pool ID of parent, or "" for
// "pools/-" (every pool).
func validateListLeasesRequest(req *poolv1.ListLeasesRequest) (string, error) {
	if req.GetParent() == allPoolsName {
		return "", nil
	}
	return parsePoolNameField("parent", req.GetParent())
}

// revisionPageToken returns the page token of the revisions below rev.
func revisionPageToken(rev int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("r" + strconv.FormatInt(rev, 10)))
}

// parseRevisionPageToken parses a revisionPageToken; "" yields 0.
func parseRevisionPageToken(tok string) (int64, error) {
	if tok == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil && len(b) > 1 && b[0] == 'r' {
		if rev, err := strconv.ParseInt(string(b[1:]), 10, 64); err == nil && rev > 0 {
			return rev, nil
		}
	}
	return 0, invalidArgument("page_token", "invalid page token")
}

// statusReason returns the description of the first field violation of a
// status error made by invalidArgument, or its message.
func statusReason(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetDescription()
		}
	}
	return st.Message()
}
