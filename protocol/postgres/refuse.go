package postgres

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/poolplane/poolplane/protocol"
)

var _ protocol.Refuser = (*Handler)(nil)

// Refuse answers the opening of a client the pool turned away as a server
// with no connection to give: SSLRequest and GSSENCRequest get 'N', and
// the StartupMessage a FATAL ErrorResponse (SQLSTATE 53300
// too_many_connections when the pool is busy, 57P03 cannot_connect_now
// when it is unavailable, 28000 when the client may not lease it). A
// CancelRequest gets nothing, as from a server.
func (h *Handler) Refuse(nc net.Conn, why protocol.Refusal, msg string) error {
	be := pgproto3.NewBackend(nc, nc)
	for range 3 { // SSLRequest, GSSENCRequest, then the startup
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return fmt.Errorf("postgres refuse: %w", err)
		}
		switch m.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := nc.Write([]byte{'N'}); err != nil {
				return err
			}
			continue
		case *pgproto3.CancelRequest:
			return nil
		}
		_, err = nc.Write(errorResponse(refusalCode(why), "poolplane: "+msg))
		return err
	}
	return errors.New("postgres refuse: no startup message")
}

// refusalCode is the SQLSTATE of a refusal.
func refusalCode(why protocol.Refusal) string {
	switch why {
	case protocol.RefuseBusy:
		return "53300" // too_many_connections
	case protocol.RefuseDenied:
		return "28000" // invalid_authorization_specification
	}
	return "57P03" // cannot_connect_now
}

var _ protocol.Opener = (*Handler)(nil)

// Open reads the first 8 bytes of a client's opening, its length and
// code. A CancelRequest is read whole and sent to its backend on a fresh
// connection, for a backend key a lease of this pool was given (any other
// is ignored, as a server ignores an unknown key): done. Anything else is
// returned for the lease's greeting.
func (h *Handler) Open(nc net.Conn) ([]byte, bool, error) {
	var head [16]byte
	if _, err := io.ReadFull(nc, head[:8]); err != nil {
		return nil, false, fmt.Errorf("postgres opening: %w", err)
	}
	if be32(head[:4]) != 16 || uint32(be32(head[4:8])) != cancelRequestCode {
		return head[:8], false, nil
	}
	if _, err := io.ReadFull(nc, head[8:]); err != nil {
		return nil, false, fmt.Errorf("postgres cancel request: %w", err)
	}
	var cr pgproto3.CancelRequest
	if err := cr.Decode(head[4:]); err != nil {
		return nil, false, fmt.Errorf("postgres cancel request: %w", err)
	}
	if addr, name, ok := h.lookup(cr.ProcessID, cr.SecretKey); ok {
		if err := h.cancel(addr, name, cr.ProcessID, cr.SecretKey); err != nil {
			return nil, true, fmt.Errorf("postgres cancel: %w", err)
		}
	}
	return nil, true, nil
}
