package server

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// permission is what a method needs; roleAllows says which roles have it.
type permission int

// Permissions, from least to most privileged.
const (
	// permPublic needs no credentials at the interceptor (health checking;
	// exempted from authentication in New). Health itself authenticates
	// the calls that name pools (Config.PublicPoolHealth).
	permPublic permission = iota + 1
	// permDiscover: any authenticated principal (server reflection, which
	// describes the API and nothing else).
	permDiscover
	// permStats: read pool statistics. Admin, operator, viewer; client for
	// the pools its patterns match (checked by the handlers).
	permStats
	// permLease: lease connections. Admin; client for its pools (checked
	// when the lease opens).
	permLease
	// permRead: read pools, revisions and leases. Admin, operator, viewer.
	permRead
	// permOperate: lifecycle verbs and lease revocation. Admin, operator.
	// Audited.
	permOperate
	// permWrite: change pool configurations. Admin only. Audited.
	permWrite
	// permBackup: read the whole database, which holds every pool and its
	// (encrypted) secrets. Admin only. Audited.
	permBackup
)

// methodPermissions is THE authorization table: the permission every RPC
// needs, by full method name. A method missing here is denied to every
// role (and TestEveryMethodHasAPermission fails), so a new RPC cannot be
// served by accident before someone decides who may call it.
var methodPermissions = map[string]permission{
	poolv1.PoolAdminService_CreatePool_FullMethodName:        permWrite,
	poolv1.PoolAdminService_GetPool_FullMethodName:           permRead,
	poolv1.PoolAdminService_ListPools_FullMethodName:         permRead,
	poolv1.PoolAdminService_UpdatePool_FullMethodName:        permWrite,
	poolv1.PoolAdminService_DeletePool_FullMethodName:        permWrite,
	poolv1.PoolAdminService_ApplyPools_FullMethodName:        permWrite,
	poolv1.PoolAdminService_ListPoolRevisions_FullMethodName: permRead,
	poolv1.PoolAdminService_RollbackPool_FullMethodName:      permWrite,
	poolv1.PoolAdminService_DrainPool_FullMethodName:         permOperate,
	poolv1.PoolAdminService_PausePool_FullMethodName:         permOperate,
	poolv1.PoolAdminService_ResumePool_FullMethodName:        permOperate,
	poolv1.PoolAdminService_ReconnectPool_FullMethodName:     permOperate,
	poolv1.PoolAdminService_ListLeases_FullMethodName:        permRead,
	poolv1.PoolAdminService_ListReplicas_FullMethodName:      permRead,
	poolv1.PoolAdminService_RevokeLease_FullMethodName:       permOperate,
	poolv1.PoolAdminService_WatchPools_FullMethodName:        permRead,
	poolv1.PoolAdminService_BackupDatabase_FullMethodName:    permBackup,

	poolv1.LeaseService_Lease_FullMethodName: permLease,

	poolv1.StatsService_GetPoolStats_FullMethodName:   permStats,
	poolv1.StatsService_WatchPoolStats_FullMethodName: permStats,

	healthpb.Health_Check_FullMethodName: permPublic,
	healthpb.Health_List_FullMethodName:  permPublic,
	healthpb.Health_Watch_FullMethodName: permPublic,

	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      permDiscover,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: permDiscover,
}

// roleAllows reports whether role r has permission p.
func roleAllows(r Role, p permission) bool {
	switch p {
	case permPublic, permDiscover:
		return validRole(r)
	case permStats:
		return r == RoleAdmin || r == RoleOperator || r == RoleViewer || r == RoleClient
	case permLease:
		return r == RoleAdmin || r == RoleClient
	case permRead:
		return r == RoleAdmin || r == RoleOperator || r == RoleViewer
	case permOperate:
		return r == RoleAdmin || r == RoleOperator
	case permWrite, permBackup:
		return r == RoleAdmin
	}
	return false
}

// audited reports whether calls of the method are audit-logged: those that
// change state, and backups.
func (p permission) audited() bool { return p == permOperate || p == permWrite || p == permBackup }

// authorize checks the principal in ctx against methodPermissions. A
// context without a principal passes: authentication is off, or a custom
// Config.AuthFunc admitted the call and decides on its own.
func authorize(ctx context.Context, fullMethod string) error {
	p := PrincipalFromContext(ctx)
	if p == nil {
		return nil
	}
	perm, ok := methodPermissions[fullMethod]
	if !ok || !roleAllows(p.Role, perm) {
		return permissionDenied(p, "role "+string(p.Role)+" may not call "+fullMethod, map[string]string{"method": fullMethod})
	}
	return nil
}

func permissionDenied(p *Principal, msg string, md map[string]string) error {
	if md == nil {
		md = map[string]string{}
	}
	md["principal"] = p.Name
	md["role"] = string(p.Role)
	return newStatus(codes.PermissionDenied, poolv1.ErrorReason_PERMISSION_DENIED, "principal "+p.Name+": "+msg, md)
}

// checkPool returns PERMISSION_DENIED (reason PERMISSION_DENIED) unless the
// principal in ctx, if any, may use pool id (its Pools patterns).
func checkPool(ctx context.Context, id string) error {
	return checkPoolOf(PrincipalFromContext(ctx), id)
}

func checkPoolOf(p *Principal, id string) error {
	if p == nil || p.allowsPool(id) {
		return nil
	}
	return permissionDenied(p, "pool "+id+" is outside its pools", map[string]string{"pool": id})
}

// authzUnary and authzStream enforce methodPermissions after
// authentication.
func authzUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func authzStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// auditUnary logs every call of an audited method (permOperate,
// permWrite; and methods without a rule), allowed or not: method, principal, target (the pool or lease
// named by the request), validate_only, resulting revision and code. It
// never logs request or response payloads, which may carry client keys.
// The store history records the principal of every committed change too.
func auditUnary(l *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		perm, ok := methodPermissions[info.FullMethod]
		if ok && !perm.audited() {
			return h(ctx, req)
		}
		resp, err := h(ctx, req)
		attrs := []slog.Attr{
			slog.String("method", info.FullMethod),
			slog.String("principal", actorFromContext(ctx)),
			slog.String("target", auditTarget(req)),
			slog.String("code", status.Code(err).String()),
		}
		if v, ok := req.(interface{ GetValidateOnly() bool }); ok && v.GetValidateOnly() {
			attrs = append(attrs, slog.Bool("validate_only", true))
		}
		if r, ok := resp.(interface{ GetRevision() int64 }); ok && err == nil && r.GetRevision() > 0 {
			attrs = append(attrs, slog.Int64("revision", r.GetRevision()))
		}
		l.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
		return resp, err
	}
}

// auditStream logs every call of an audited streaming method
// (BackupDatabase), allowed or not, when it ends: method, principal, code.
func auditStream(l *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		perm, ok := methodPermissions[info.FullMethod]
		if ok && !perm.audited() {
			return h(srv, ss)
		}
		err := h(srv, ss)
		l.LogAttrs(ss.Context(), slog.LevelInfo, "audit",
			slog.String("method", info.FullMethod),
			slog.String("principal", actorFromContext(ss.Context())),
			slog.String("code", status.Code(err).String()))
		return err
	}
}

// auditTarget names what a mutating request acts on: a pool or lease name,
// or the pools of an ApplyPools.
func auditTarget(req any) string {
	switch r := req.(type) {
	case *poolv1.CreatePoolRequest:
		return poolName(r.GetPoolId())
	case *poolv1.UpdatePoolRequest:
		return r.GetPool().GetName()
	case *poolv1.ApplyPoolsRequest:
		names := make([]string, 0, len(r.GetPools()))
		for _, p := range r.GetPools() {
			names = append(names, p.GetName())
		}
		s := strings.Join(names, ",")
		if r.GetPrune() {
			s += " (prune)"
		}
		return s
	case *poolv1.RollbackPoolRequest:
		return r.GetName() + "@" + strconv.FormatInt(r.GetRevision(), 10)
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

// leaseCaps counts the leases each principal holds, for Principal.MaxLeases.
// Counters are kept by principal name, so they survive an auth file
// reload. Safe for concurrent use (lock-free after a principal's first
// lease).
type leaseCaps struct {
	counts sync.Map // principal name -> *atomic.Int64
}

// take counts one more lease of p and returns the counter to decrement
// when it ends, or a RESOURCE_EXHAUSTED status (reason QUOTA_EXCEEDED) if
// p already holds MaxLeases. A nil counter and error mean no cap.
func (c *leaseCaps) take(p *Principal) (*atomic.Int64, error) {
	if p == nil || p.MaxLeases <= 0 {
		return nil, nil
	}
	v, ok := c.counts.Load(p.Name)
	if !ok {
		v, _ = c.counts.LoadOrStore(p.Name, new(atomic.Int64))
	}
	n := v.(*atomic.Int64)
	if n.Add(1) > int64(p.MaxLeases) {
		n.Add(-1)
		return nil, newStatus(codes.ResourceExhausted, poolv1.ErrorReason_QUOTA_EXCEEDED,
			"principal "+p.Name+" holds its max_leases ("+strconv.Itoa(p.MaxLeases)+") leases already",
			map[string]string{"quota": "max_leases", "principal": p.Name, "limit": strconv.Itoa(p.MaxLeases)})
	}
	return n, nil
}
