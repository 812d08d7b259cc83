// Package http1 follows HTTP/1.1 exchanges on a pooled connection.
package http1

import (
	"context"
	"errors"
	"net"

	"github.com/poolplane/poolplane/protocol"
)

// Handler is an HTTP1 pool's protocol.Handler.
type Handler struct{}

// New returns the HTTP/1.1 handler.
func New() *Handler { return &Handler{} }

// Setup does nothing: HTTP/1.1 has no connection setup.
func (*Handler) Setup(context.Context, net.Conn) error { return nil }

// Probe is not implemented yet.
func (*Handler) Probe(net.Conn) error { return errors.New("http1: no probe") }

// NewSession starts following a lease.
func (*Handler) NewSession() protocol.Session { return &Session{} }

// Session follows one lease.
type Session struct{}

// Request follows client bytes.
func (*Session) Request([]byte) {}

// Reply follows upstream bytes.
func (*Session) Reply([]byte) {}

// State is always NotResettable until the framer lands.
func (*Session) State() protocol.State { return protocol.NotResettable }

// Reset fails.
func (*Session) Reset(net.Conn) error { return errors.New("http1: not resettable") }
