package poolmgr

import (
	"context"
	"errors"
	"testing"
)

// TestManagerRefusesZonedAndEmbeddedEndpoints: the default policy refuses
// the written forms at write time, dry runs included.
func TestManagerRefusesZonedAndEmbeddedEndpoints(t *testing.T) {
	m := newTestManager(t, newMemStore())
	for _, ep := range []string{"[fd00:ec2::254%lo]:80", "[fe80::1%lo]:9004", "[::%lo]:9004", "[64:ff9b::a9fe:a9fe]:80", "[2002:a9fe:a9fe::]:80",
		"[::169.254.169.254]:80", "100.100.100.200:80"} {
		for _, dry := range []bool{true, false} {
			_, err := m.Create(context.Background(), "meta", cfgFor(ep), WriteOptions{ValidateOnly: dry})
			if !errors.Is(err, ErrUpstreamNotAllowed) && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Create(%s, validate_only=%v) = %v, want a refusal", ep, dry, err)
			}
		}
	}
	if ids := m.Pools(); len(ids) != 0 {
		t.Fatalf("pools created: %v", ids)
	}
}
