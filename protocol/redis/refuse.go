package redis

import (
	"net"
	"strings"

	"github.com/poolplane/poolplane/protocol"
)

var _ protocol.Refuser = (*Handler)(nil)

// Refuse writes a RESP error to a client the pool turned away: NOPERM when
// it may not lease the pool, ERR otherwise. Whatever the client sends
// first gets it as its reply.
func (h *Handler) Refuse(nc net.Conn, why protocol.Refusal, msg string) error {
	_, err := nc.Write(ErrorReply(why, msg))
	return err
}

// ErrorReply encodes the RESP error Refuse writes; msg's line breaks are
// replaced by spaces.
func ErrorReply(why protocol.Refusal, msg string) []byte {
	prefix := "-ERR "
	if why == protocol.RefuseDenied {
		prefix = "-NOPERM "
	}
	msg = strings.NewReplacer("\r", " ", "\n", " ").Replace(msg)
	return []byte(prefix + "poolplane: " + msg + "\r\n")
}
