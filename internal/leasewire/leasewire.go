// Package leasewire holds the protobuf wire layout of lease data frames,
// shared by the SDK's and the server's lease codecs: both encode and
// recognise data frames by hand to avoid protobuf's copies of the payload.
// It depends only on protowire, so the SDK compiles nothing else of the
// project.
package leasewire

import "google.golang.org/protobuf/encoding/protowire"

// MaxDataHeader bounds the header of an encoded data frame: two one-byte
// tags and two varint lengths of at most five bytes (gRPC messages are
// under 4 GiB).
const MaxDataHeader = 2 * (1 + 5)

// AppendDataHeader appends the header of a data frame with an n-byte
// payload: field 2 (the oneof's data) holding field 1 (Data.data). It is
// the same for LeaseRequest and LeaseResponse.
func AppendDataHeader(b []byte, n int) []byte {
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(1+protowire.SizeVarint(uint64(n))+n))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// ParseDataHeader reads the header of a data frame of total bytes from the
// first bytes of its encoding (at most MaxDataHeader). It returns the
// header length, or ok false when the message is not exactly one data frame
// with a non-empty payload, as proto.Marshal writes it: anything else
// (other fields, repeated or unknown fields, an empty Data) is left to
// proto.
func ParseDataHeader(b []byte, total int) (hlen int, ok bool) {
	if len(b) < 1 || b[0] != 2<<3|byte(protowire.BytesType) {
		return 0, false
	}
	outer, k := protowire.ConsumeVarint(b[1:])
	if k < 0 || k != protowire.SizeVarint(outer) || uint64(total) != uint64(1+k)+outer {
		return 0, false
	}
	b = b[1+k:]
	if len(b) < 1 || b[0] != 1<<3|byte(protowire.BytesType) {
		return 0, false
	}
	inner, j := protowire.ConsumeVarint(b[1:])
	if j < 0 || j != protowire.SizeVarint(inner) || outer != uint64(1+j)+inner || inner == 0 {
		return 0, false
	}
	return 1 + k + 1 + j, true
}

// MaxRespDataHeader bounds the header of an encoded server data frame:
// MaxDataHeader plus the upstream_written field (a one-byte tag and a
// varint of at most ten bytes).
const MaxRespDataHeader = MaxDataHeader + 1 + 10

// AppendRespDataHeader appends the header of a server data frame with an
// n-byte payload that reports written client bytes (LeaseResponse.Data
// with upstream_written, field 2, before data, field 1; nothing for
// written 0). Protobuf takes fields in any order; the SDK's decoder and
// proto.Unmarshal both read it.
func AppendRespDataHeader(b []byte, n int, written uint64) []byte {
	inner := 1 + protowire.SizeVarint(uint64(n)) + n
	if written > 0 {
		inner += 1 + protowire.SizeVarint(written)
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	if written > 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, written)
	}
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// ParseRespDataHeader reads the header of a server data frame of total
// bytes from its first bytes (at most MaxRespDataHeader), as
// AppendRespDataHeader writes it or proto.Marshal does without
// upstream_written. It returns the header length and upstream_written, or
// ok false for anything else, which is left to proto.
func ParseRespDataHeader(b []byte, total int) (hlen int, written uint64, ok bool) {
	if len(b) < 1 || b[0] != 2<<3|byte(protowire.BytesType) {
		return 0, 0, false
	}
	outer, k := protowire.ConsumeVarint(b[1:])
	if k < 0 || k != protowire.SizeVarint(outer) || uint64(total) != uint64(1+k)+outer {
		return 0, 0, false
	}
	hlen = 1 + k
	b = b[1+k:]
	if len(b) >= 1 && b[0] == 2<<3|byte(protowire.VarintType) {
		w, j := protowire.ConsumeVarint(b[1:])
		if j < 0 || j != protowire.SizeVarint(w) || w == 0 {
			return 0, 0, false
		}
		written = w
		hlen += 1 + j
		b = b[1+j:]
	}
	if len(b) < 1 || b[0] != 1<<3|byte(protowire.BytesType) {
		return 0, 0, false
	}
	inner, j := protowire.ConsumeVarint(b[1:])
	if j < 0 || j != protowire.SizeVarint(inner) || inner == 0 || uint64(total) != uint64(hlen+1+j)+inner {
		return 0, 0, false
	}
	return hlen + 1 + j, written, true
}

// FeaturesKey is the metadata key by which a client lists, separated by
// commas, the optional lease-stream behaviours it takes. A server uses a
// feature only with a client that listed it.
const FeaturesKey = "poolplane-lease-features"

// FeatureHalfClose says the client takes the server's close_write frame (the
// upstream half-closed and the lease goes on) instead of
// ended{UPSTREAM_EOF}.
const FeatureHalfClose = "half-close"

// FeatureGrantedData says the client takes the upstream's first bytes in
// the granted frame (Granted.data) of a lease whose open carried data.
const FeatureGrantedData = "granted-data"

// ServerFeaturesKey is the key in the server's header on a Lease stream
// under which it lists, separated by commas, what it takes from a client
// beyond the first version of the protocol. A client uses a feature only
// with a server that listed it.
const ServerFeaturesKey = "poolplane-lease-server-features"

// FeatureOpenData says the server writes the bytes of an open frame
// (Open.data) to the upstream; an older server would drop them.
const FeatureOpenData = "open-data"

// FrameSizeKey is the metadata key by which each side of a Lease stream
// says how large a data frame it takes: the largest payload, in decimal
// bytes. The client sends it with the call, the server in its header. A
// side that does not send it (an older one) is sent frames of at most
// SmallFrame bytes.
const FrameSizeKey = "poolplane-max-data-frame"

// MaxStreamsKey is the metadata key of the server's header on a Lease
// stream that says, in decimal, how many streams it allows open at once on
// one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, which grpc-go
// does not show its caller). A client that holds more leases than that
// opens more connections.
const MaxStreamsKey = "poolplane-max-concurrent-streams"

// SmallFrame is the largest data frame payload sent to a side that did not
// say it takes larger ones. Such a side may decode with grpc-go's proto
// codec, and an encoded frame must then fit grpc-go's 32 KiB buffer tier:
// one byte more and every message takes (and zeroes) a 1 MiB buffer.
const SmallFrame = 32<<10 - 64
