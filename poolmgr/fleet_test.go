package poolmgr

import "testing"

func TestFleetShare(t *testing.T) {
	tests := []struct {
		limit, n, min int
		want          []int // by rank
	}{
		{10, 1, 1, []int{10}},
		{10, 3, 1, []int{4, 3, 3}},
		{9, 3, 1, []int{3, 3, 3}},
		{2, 3, 1, []int{1, 1, 1}}, // below n: each keeps 1 (documented overshoot)
		{2, 3, 0, []int{1, 1, 0}},
		{0, 2, 0, []int{0, 0}},
	}
	for _, tt := range tests {
		sum := 0
		for rank, want := range tt.want {
			got := FleetShare(tt.limit, rank, tt.n, tt.min)
			if got != want {
				t.Errorf("FleetShare(%d, %d, %d, %d) = %d, want %d", tt.limit, rank, tt.n, tt.min, got, want)
			}
			sum += got
		}
		if tt.limit >= tt.n && sum != tt.limit {
			t.Errorf("limit %d over %d: shares add up to %d", tt.limit, tt.n, sum)
		}
	}
}

func TestShareConfigKeepsOrder(t *testing.T) {
	cfg := Config{Endpoints: []string{"127.0.0.1:1"}}
	cfg.Limits.MaxConnections, cfg.Limits.MaxIdle, cfg.Limits.MinIdle = 10, 4, 3
	cfg = cfg.WithDefaults()
	for n := 1; n <= 12; n++ {
		for rank := range n {
			c := shareConfig(cfg, rank, n)
			if err := c.Validate(); err != nil {
				t.Fatalf("share %d/%d: %v", rank, n, err)
			}
		}
	}
}
