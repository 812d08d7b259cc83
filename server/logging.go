package server

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// routineServices are called once per lease or per poll: a lease stream
// (or a few leases on one), stats snapshots for dashboards and the SDK,
// health checks by load balancers. Their calls are not worth a line each
// at INFO; admin calls are (and mutations are audited as well).
var routineServices = map[string]bool{
	poolv1.LeaseService_ServiceDesc.ServiceName: true,
	poolv1.StatsService_ServiceDesc.ServiceName: true,
	healthpb.Health_ServiceDesc.ServiceName:     true,
}

// routineCall reports whether a call belongs to a routine service.
func routineCall(_ context.Context, c interceptors.CallMeta) bool {
	return routineServices[c.Service]
}

// adminCall reports whether a call is not routine.
func adminCall(ctx context.Context, c interceptors.CallMeta) bool {
	return !routineCall(ctx, c)
}

// routineLevel is the level of a routine call's "finished call" line:
// DEBUG when it succeeded or its client cancelled it (how the SDK ends an
// idle lease stream), the usual level for an error.
func routineLevel(code codes.Code) logging.Level {
	switch code {
	case codes.OK, codes.Canceled:
		return logging.LevelDebug
	}
	return logging.DefaultServerCodeToLevel(code)
}

// slogLogger adapts slog to go-grpc-middleware's logging.Logger.
func slogLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
