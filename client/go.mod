module github.com/poolplane/poolplane/client

go 1.26.0

require (
	github.com/poolplane/poolplane/gen v0.0.0-00010101000000-000000000000
	github.com/poolplane/poolplane/internal/leasewire v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
	golang.org/x/net v0.62.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b
	google.golang.org/grpc v1.74.2
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/poolplane/poolplane/internal/testkit v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

// In this repository the SDK builds against the gen and leasewire modules
// beside it. A consumer's build ignores these lines and uses the tagged
// versions required above (see docs/modules.md).
replace (
	github.com/poolplane/poolplane/gen => ../gen
	github.com/poolplane/poolplane/internal/leasewire => ../internal/leasewire
)

replace github.com/poolplane/poolplane/internal/testkit => ../internal/testkit
