package http1

import (
	"net"
	"strconv"
	"strings"

	"github.com/poolplane/poolplane/protocol"
)

var _ protocol.Refuser = (*Handler)(nil)

// Refuse writes an HTTP/1.1 error response to a client the pool turned
// away, with Connection: close: 403 when it may not lease the pool, 503
// otherwise (with Retry-After: 1 when the pool is busy).
func (*Handler) Refuse(nc net.Conn, why protocol.Refusal, msg string) error {
	_, err := nc.Write(ErrorResponse(why, msg))
	return err
}

// ErrorResponse encodes the response Refuse writes; msg becomes its
// text/plain body.
func ErrorResponse(why protocol.Refusal, msg string) []byte {
	status, extra := "503 Service Unavailable", ""
	switch why {
	case protocol.RefuseDenied:
		status = "403 Forbidden"
	case protocol.RefuseBusy:
		extra = "Retry-After: 1\r\n"
	}
	body := "poolplane: " + strings.NewReplacer("\r", " ", "\n", " ").Replace(msg) + "\n"
	return []byte("HTTP/1.1 " + status + "\r\nContent-Type: text/plain; charset=utf-8\r\n" + extra +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}
