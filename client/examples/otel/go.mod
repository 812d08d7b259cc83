// An OpenTelemetry tracer for the poolplane SDK, in a module of its own so
// that the SDK's module requires no OpenTelemetry package. The replace
// lines stand for the tagged versions a real user would require.
module github.com/poolplane/poolplane/client/examples/otel

go 1.26.0

require (
	github.com/poolplane/poolplane/client v0.0.0-00010101000000-000000000000
	github.com/poolplane/poolplane/gen v0.0.0-00010101000000-000000000000
	go.opentelemetry.io/otel v1.47.0
	go.opentelemetry.io/otel/metric v1.47.0
	go.opentelemetry.io/otel/sdk v1.47.0
	go.opentelemetry.io/otel/sdk/metric v1.47.0
	go.opentelemetry.io/otel/trace v1.47.0
	go.uber.org/goleak v1.3.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b
	google.golang.org/grpc v1.74.2
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/go-logr/stdr v1.2.2 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/poolplane/poolplane/internal/leasewire v0.0.0-00010101000000-000000000000 // indirect
	go.opentelemetry.io/auto/sdk v1.2.1 // indirect
	go.opentelemetry.io/otel/log v1.47.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

replace (
	github.com/poolplane/poolplane/client => ../..
	github.com/poolplane/poolplane/gen => ../../../gen
	github.com/poolplane/poolplane/internal/leasewire => ../../../internal/leasewire
	github.com/poolplane/poolplane/internal/testkit => ../../../internal/testkit
)
