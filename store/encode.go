package store

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// errCorrupt reports a record that does not decode. It means the file was
// damaged or written by incompatible code; it is wrapped with the location.
var errCorrupt = errors.New("store: corrupt record")

// itob encodes a revision as an 8-byte big-endian key, so that bbolt's byte
// order is revision order.
func itob(v int64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(v))
}

// btoi decodes an 8-byte big-endian revision key.
func btoi(b []byte) int64 {
	return int64(binary.BigEndian.Uint64(b))
}

// kvHeaderLen is the fixed prefix of a kv record:
// CreateRevision, ModRevision and Version, 8 bytes each.
const kvHeaderLen = 24

// encodeKV encodes the value part of a kv bucket record.
func encodeKV(kv KeyValue) []byte {
	b := make([]byte, 0, kvHeaderLen+len(kv.Value))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.CreateRevision))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.ModRevision))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.Version))
	return append(b, kv.Value...)
}

// decodeKV decodes a kv bucket record, copying the value out of b (which
// may point into the bbolt mmap).
func decodeKV(key string, b []byte) (KeyValue, error) {
	if len(b) < kvHeaderLen {
		return KeyValue{}, fmt.Errorf("kv %q: %w", key, errCorrupt)
	}
	return KeyValue{
		Key:            key,
		CreateRevision: int64(binary.BigEndian.Uint64(b[0:])),
		ModRevision:    int64(binary.BigEndian.Uint64(b[8:])),
		Version:        int64(binary.BigEndian.Uint64(b[16:])),
		Value:          clone(b[kvHeaderLen:]),
	}, nil
}

// clone copies b; the result is never nil, so a stored empty value reads
// back as an empty, non-nil slice.
func clone(b []byte) []byte {
	return append(make([]byte, 0, len(b)), b...)
}

// Stored action codes. They are part of the file format: never renumber.
const (
	codePut    byte = 1
	codeDelete byte = 2
)

func actionCode(a Action) byte {
	if a == ActionDelete {
		return codeDelete
	}
	return codePut
}

func codeAction(c byte) (Action, bool) {
	switch c {
	case codePut:
		return ActionPut, true
	case codeDelete:
		return ActionDelete, true
	}
	return 0, false
}

// historyPrefix is the history bucket prefix of key: a 2-byte big-endian
// length, then the key. Every entry of key is the prefix followed by an
// 8-byte revision, so no key's entries can be confused with another's.
// Revision 0 holds the key's history marker (see marker).
func historyPrefix(key string) []byte {
	b := make([]byte, 0, 2+len(key)+8)
	b = binary.BigEndian.AppendUint16(b, uint16(len(key)))
	return append(b, key...)
}

func historyKey(prefix []byte, rev int64) []byte {
	k := make([]byte, 0, len(prefix)+8)
	k = append(k, prefix...)
	return binary.BigEndian.AppendUint64(k, uint64(rev))
}

// marker is the per-key history bookkeeping stored at revision 0.
type marker struct {
	trimmed int64 // highest revision of this key's discarded entries; 0 if none
	count   int64 // entries retained
}

func encodeMarker(m marker) []byte {
	b := make([]byte, 0, 16)
	b = binary.BigEndian.AppendUint64(b, uint64(m.trimmed))
	return binary.BigEndian.AppendUint64(b, uint64(m.count))
}

func decodeMarker(b []byte) (marker, error) {
	if len(b) != 16 {
		return marker{}, fmt.Errorf("history marker: %w", errCorrupt)
	}
	return marker{
		trimmed: int64(binary.BigEndian.Uint64(b)),
		count:   int64(binary.BigEndian.Uint64(b[8:])),
	}, nil
}

// encodeHistory encodes a history entry: time (unix ns), action, actor
// (uvarint length, bytes), value (rest).
func encodeHistory(e HistoryEntry) []byte {
	b := make([]byte, 0, 8+1+binary.MaxVarintLen64+len(e.Actor)+len(e.Value))
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixNano()))
	b = append(b, actionCode(e.Action))
	b = appendString(b, e.Actor)
	return append(b, e.Value...)
}

func decodeHistory(rev int64, b []byte) (HistoryEntry, error) {
	d := decoder{b: b}
	t := d.int64()
	a, ok := codeAction(d.byte())
	actor := d.string()
	if d.err != nil || !ok {
		return HistoryEntry{}, fmt.Errorf("history entry at revision %d: %w", rev, errCorrupt)
	}
	e := HistoryEntry{Revision: rev, Time: time.Unix(0, t).UTC(), Action: a, Actor: actor}
	if a == ActionPut {
		e.Value = clone(d.b)
	}
	return e, nil
}

// encodeLog encodes the change log entry of one revision: time, actor, the
// number of events, then per event its action, key, CreateRevision,
// ModRevision, Version and value.
func encodeLog(t time.Time, actor string, evs []Event) []byte {
	n := 8 + 2*binary.MaxVarintLen64 + len(actor)
	for _, ev := range evs {
		n += 1 + 2*binary.MaxVarintLen64 + len(ev.KV.Key) + kvHeaderLen + len(ev.KV.Value)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	b = appendString(b, actor)
	b = binary.AppendUvarint(b, uint64(len(evs)))
	for _, ev := range evs {
		b = append(b, actionCode(ev.Action))
		b = appendString(b, ev.KV.Key)
		b = binary.BigEndian.AppendUint64(b, uint64(ev.KV.CreateRevision))
		b = binary.BigEndian.AppendUint64(b, uint64(ev.KV.ModRevision))
		b = binary.BigEndian.AppendUint64(b, uint64(ev.KV.Version))
		b = appendString(b, string(ev.KV.Value))
	}
	return b
}

// decodeLog decodes the change log entry of rev, appending its events to
// evs. Values are copied.
func decodeLog(evs []Event, rev int64, b []byte) ([]Event, error) {
	d := decoder{b: b}
	t := time.Unix(0, d.int64()).UTC()
	actor := d.string()
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		a, ok := codeAction(d.byte())
		if !ok {
			d.err = errCorrupt
		}
		kv := KeyValue{Key: d.string()}
		kv.CreateRevision = d.int64()
		kv.ModRevision = d.int64()
		kv.Version = d.int64()
		kv.Value = d.bytes()
		evs = append(evs, Event{Action: a, KV: kv, Revision: rev, Time: t, Actor: actor})
	}
	if d.err != nil {
		return evs, fmt.Errorf("change log at revision %d: %w", rev, errCorrupt)
	}
	return evs, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads fields in order, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil || uint64(len(d.b)) < n {
		d.err = errCorrupt
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) int64() int64 {
	if v := d.take(8); v != nil {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.take(d.uvarint())) }

func (d *decoder) bytes() []byte { return clone(d.take(d.uvarint())) }

// tokenVersion is the first byte of every page token, so the format can
// change without old tokens being misread.
const tokenVersion = 1

// encodePageToken makes the opaque token that resumes a List after key.
func encodePageToken(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{tokenVersion}, lastKey...))
}

// decodePageToken returns the key a token resumes after. The token must
// have come from a List with the same prefix.
func decodePageToken(token, prefix string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 2 || b[0] != tokenVersion {
		return "", fmt.Errorf("page token %q: %w", token, ErrInvalidArgument)
	}
	after := string(b[1:])
	if !strings.HasPrefix(after, prefix) || len(after) > MaxKeySize {
		return "", fmt.Errorf("page token %q does not belong to prefix %q: %w", token, prefix, ErrInvalidArgument)
	}
	return after, nil
}
