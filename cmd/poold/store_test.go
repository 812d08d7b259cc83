package main

import (
	"errors"
	"io"
	"testing"
)

func TestStoreFlag(t *testing.T) {
	tests := []struct {
		args []string
		env  string
		want string
		ok   bool
	}{
		{nil, "", "bolt", true},
		{[]string{"--store", "etcd://127.0.0.1:2379/poolplane"}, "", "etcd://127.0.0.1:2379/poolplane", true},
		{[]string{"--store", "etcd://a:1,b:2/pp"}, "", "etcd://a:1,b:2/pp", true},
		{nil, "etcd://e:2379/x", "etcd://e:2379/x", true},
		{[]string{"--store", "etcd://a:1"}, "", "", false},
		{[]string{"--store", "postgres://a/b"}, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.want+tt.env, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("POOLPLANE_STORE", tt.env)
			}
			o, err := parseFlags(tt.args, io.Discard)
			if !tt.ok {
				var uerr *usageError
				if !errors.As(err, &uerr) {
					t.Errorf("parseFlags(%v) = %v, want a usage error", tt.args, err)
				}
				return
			}
			if err != nil || o.store != tt.want {
				t.Errorf("parseFlags(%v) = %q, %v; want %q", tt.args, o.store, err, tt.want)
			}
		})
	}
}
