package leasewire

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// The hand-written header is what proto.Marshal writes for a data frame of
// either direction, and ParseDataHeader accepts exactly that.
func TestDataHeaderMatchesProto(t *testing.T) {
	for _, n := range []int{1, 127, 128, 16383, 16384, 32<<10 - 64, 256 << 10} {
		payload := bytes.Repeat([]byte{'x'}, n)
		for _, m := range []proto.Message{
			&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: payload}}},
			&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: payload}}},
		} {
			want, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			hdr := AppendDataHeader(nil, n)
			if len(hdr) > MaxDataHeader {
				t.Fatalf("n=%d: header of %d bytes, over MaxDataHeader", n, len(hdr))
			}
			if got := append(hdr, payload...); !bytes.Equal(got, want) {
				t.Fatalf("n=%d %T: hand-written encoding differs from proto.Marshal", n, m)
			}
			if hlen, ok := ParseDataHeader(want[:min(len(want), MaxDataHeader)], len(want)); !ok || hlen != len(hdr) {
				t.Fatalf("n=%d: ParseDataHeader = %d, %v; want %d, true", n, hlen, ok, len(hdr))
			}
		}
	}
}

// Anything but one non-empty data frame as proto.Marshal writes it is left
// to proto.
func TestParseDataHeaderRefuses(t *testing.T) {
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	data := enc(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: []byte("abc")}}})
	tests := []struct {
		name  string
		b     []byte
		total int
	}{
		{"empty", nil, 0},
		{"open frame", enc(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "p"}}}), 0},
		{"empty data", enc(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{}}}), 0},
		{"trailing field", append(append([]byte(nil), data...), 0x08, 0x01), len(data) + 2},
		{"short total", data, len(data) - 1},
		{"non-minimal length", []byte{2<<3 | 2, 0x85, 0x00, 1<<3 | 2, 3, 'a', 'b', 'c'}, 8},
	}
	for _, tt := range tests {
		total := tt.total
		if total == 0 {
			total = len(tt.b)
		}
		if hlen, ok := ParseDataHeader(tt.b, total); ok {
			t.Errorf("%s: accepted with header %d", tt.name, hlen)
		}
	}
}
