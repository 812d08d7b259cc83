module github.com/poolplane/poolplane/cmd/poolbench

go 1.26.0

require (
	github.com/poolplane/poolplane v0.0.0-00010101000000-000000000000
	github.com/poolplane/poolplane/client v0.0.0-00010101000000-000000000000
	github.com/poolplane/poolplane/gen v0.0.0-00010101000000-000000000000
	github.com/poolplane/poolplane/internal/testkit v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
	gonum.org/v1/plot v0.17.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	codeberg.org/go-fonts/liberation v0.5.0 // indirect
	codeberg.org/go-latex/latex v0.2.0 // indirect
	codeberg.org/go-pdf/fpdf v0.11.1 // indirect
	git.sr.ht/~sbinet/gg v0.7.0 // indirect
	github.com/ajstarks/svgo v0.0.0-20211024235047-1546f124cd8b // indirect
	github.com/golang/freetype v0.0.0-20170609003504-e2365dfdc4a0 // indirect
	github.com/poolplane/poolplane/internal/leasewire v0.0.0-00010101000000-000000000000 // indirect
	golang.org/x/image v0.30.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
)

// poolbench is built and tested against the poolplane tree it lives in.
replace github.com/poolplane/poolplane => ../..

replace github.com/poolplane/poolplane/gen => ../../gen

replace github.com/poolplane/poolplane/internal/leasewire => ../../internal/leasewire

replace github.com/poolplane/poolplane/client => ../../client

replace github.com/poolplane/poolplane/internal/testkit => ../../internal/testkit
