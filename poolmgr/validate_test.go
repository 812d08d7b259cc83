package poolmgr

import (
	"context"
	"errors"
	"testing"
)

// TestConfigRefusesInjection: the fields that reach other systems refuse
// what would smuggle a request or a line into them, through the Manager
// (dry runs included).
func TestConfigRefusesInjection(t *testing.T) {
	m := newTestManager(t, newMemStore())
	ctx := context.Background()
	for name, mod := range map[string]func(*Config){
		"CRLF in http_path": func(c *Config) {
			c.HealthCheck = HealthCheck{Kind: HealthHTTP, HTTPPath: "/ HTTP/1.1\r\nHost: x\r\n\r\nGET /admin"}
		},
		"CRLF in http_path of a TCP check": func(c *Config) {
			c.HealthCheck = HealthCheck{Kind: HealthTCP, HTTPPath: "/\r\nX: 1"}
		},
		"space in host":   func(c *Config) { c.Endpoints = []string{"redis internal:6379"} },
		"newline in host": func(c *Config) { c.Endpoints = []string{"redis\n.internal:6379"} },
		"NUL in host":     func(c *Config) { c.Endpoints = []string{"redis\x00:6379"} },
	} {
		for _, dry := range []bool{true, false} {
			cfg := cfgFor("127.0.0.1:1")
			mod(&cfg)
			_, err := m.Create(ctx, "inj", cfg, WriteOptions{ValidateOnly: dry})
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("%s (validate_only=%v): %v, want ErrInvalidConfig", name, dry, err)
			}
		}
	}
}
