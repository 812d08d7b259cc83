package etcdstore

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/poolplane/poolplane/store"
)

var errCorrupt = errors.New("etcdstore: corrupt record")

func parseHex(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	return n, nil
}

// histEntry is the value of a history entry: its revision is the etcd
// create_revision of the entry's key.
type histEntry struct {
	time   time.Time
	action store.Action
	actor  string
	value  []byte
}

// Stored action codes: never renumber.
const (
	codePut    byte = 1
	codeDelete byte = 2
)

// encode: version byte 1, unix nanos (8), action (1), uvarint actor length,
// actor, value.
func (e histEntry) encode() []byte {
	b := make([]byte, 0, 1+8+1+binary.MaxVarintLen64+len(e.actor)+len(e.value))
	b = append(b, 1)
	b = binary.BigEndian.AppendUint64(b, uint64(e.time.UnixNano()))
	code := codePut
	if e.action == store.ActionDelete {
		code = codeDelete
	}
	b = append(b, code)
	b = binary.AppendUvarint(b, uint64(len(e.actor)))
	b = append(b, e.actor...)
	return append(b, e.value...)
}

func decodeHistEntry(b []byte) (histEntry, error) {
	if len(b) < 10 || b[0] != 1 {
		return histEntry{}, errCorrupt
	}
	e := histEntry{time: time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))).UTC()}
	switch b[9] {
	case codePut:
		e.action = store.ActionPut
	case codeDelete:
		e.action = store.ActionDelete
	default:
		return histEntry{}, errCorrupt
	}
	n, k := binary.Uvarint(b[10:])
	if k <= 0 || uint64(len(b)-10-k) < n {
		return histEntry{}, errCorrupt
	}
	rest := b[10+k:]
	e.actor = string(rest[:n])
	if e.action == store.ActionPut {
		e.value = append(make([]byte, 0, len(rest)-int(n)), rest[n:]...)
	}
	return e, nil
}

func (e histEntry) toStore(rev int64) store.HistoryEntry {
	return store.HistoryEntry{Revision: rev, Time: e.time, Action: e.action, Value: e.value, Actor: e.actor}
}

// Page tokens: base64url of version byte 1 then the last key returned.
func encodePageToken(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{1}, lastKey...))
}

func decodePageToken(token, prefix string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 2 || b[0] != 1 {
		return "", fmt.Errorf("page token: %w", store.ErrInvalidArgument)
	}
	key := string(b[1:])
	if !strings.HasPrefix(key, prefix) {
		return "", fmt.Errorf("page token from another prefix: %w", store.ErrInvalidArgument)
	}
	return key, nil
}

// validateKey, validateOps and checkExpect repeat package store's rules:
// the same limits and the same errors.
func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("empty key: %w", store.ErrInvalidArgument)
	}
	if len(key) > store.MaxKeySize {
		return fmt.Errorf("key of %d bytes exceeds %d: %w", len(key), store.MaxKeySize, store.ErrInvalidArgument)
	}
	return nil
}

func validateOps(ops []store.Op, actor string) error {
	if len(ops) == 0 {
		return fmt.Errorf("empty txn: %w", store.ErrInvalidArgument)
	}
	if len(actor) > store.MaxActorSize {
		return fmt.Errorf("actor of %d bytes exceeds %d: %w", len(actor), store.MaxActorSize, store.ErrInvalidArgument)
	}
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		if op.Kind != store.OpPut && op.Kind != store.OpDelete {
			return fmt.Errorf("op %d: unknown kind %d: %w", i, op.Kind, store.ErrInvalidArgument)
		}
		if err := validateKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if len(op.Value) > store.MaxValueSize {
			return fmt.Errorf("op %d: value of %d bytes exceeds %d: %w", i, len(op.Value), store.MaxValueSize, store.ErrInvalidArgument)
		}
		if err := op.Expect.Validate(); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("op %d: key %q repeated in txn: %w", i, op.Key, store.ErrInvalidArgument)
		}
		seen[op.Key] = struct{}{}
	}
	return nil
}
