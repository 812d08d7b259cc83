package poolplaneotel_test

import (
	"context"
	"log"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/poolplane/poolplane/client"
	poolplaneotel "github.com/poolplane/poolplane/client/examples/otel"
)

func ExampleNewTracer() {
	// Any exporter will do; this one keeps the spans in memory.
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	defer tp.Shutdown(context.Background())

	// Metrics go to the global meter provider, unless WithMeterProvider
	// names another.
	tracer, err := poolplaneotel.NewTracer(poolplaneotel.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New("127.0.0.1:7700", client.WithInsecure(), client.WithTracer(tracer))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	conn, err := c.Lease(context.Background(), "redis") // a span "poolplane.lease"
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close() // a span "poolplane.held" once the lease is over
}
