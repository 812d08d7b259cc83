// Package reliability holds poolplane's reliability tests: upstream
// restarts and silent idle cuts, blackholed and unreachable upstreams, DNS
// flips, poold and client crashes, overload and slow readers, and a fuzz
// target for the lease frame sequence. Every test runs on loopback, is
// bounded in count and time, and logs one "FIGURE:" line with the number it
// proves; docs/reliability.md lists the guarantees and the latest figures.
//
// The package has no non-test code: run it with
//
//	go test -race -count=1 -v ./reliability | grep FIGURE:
package reliability
