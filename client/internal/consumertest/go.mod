// A service that uses the poolplane SDK and nothing else of poolplane.
// graph_test.go checks that its module graph holds none of the server's
// requirements. The replace lines stand for the tagged versions a real
// consumer would require.
module example.com/sdkconsumer

go 1.26.0

require github.com/poolplane/poolplane/client v0.0.0-00010101000000-000000000000

require (
	github.com/poolplane/poolplane/gen v0.0.0-00010101000000-000000000000 // indirect
	github.com/poolplane/poolplane/internal/leasewire v0.0.0-00010101000000-000000000000 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
	google.golang.org/grpc v1.74.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace (
	github.com/poolplane/poolplane/client => ../..
	github.com/poolplane/poolplane/gen => ../../../gen
	github.com/poolplane/poolplane/internal/leasewire => ../../../internal/leasewire
	github.com/poolplane/poolplane/internal/testkit => ../../../internal/testkit
)
