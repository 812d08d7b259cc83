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

func TestRespDataHeaderDecodesAsProto(t *testing.T) {
	for _, n := range []int{1, 127, 128, 16383, 16384, 256 << 10} {
		for _, w := range []uint64{0, 1, 127, 128, 1 << 40} {
			payload := bytes.Repeat([]byte{'y'}, n)
			hdr := AppendRespDataHeader(nil, n, w)
			if len(hdr) > MaxRespDataHeader {
				t.Fatalf("n=%d w=%d: header of %d bytes, over MaxRespDataHeader", n, w, len(hdr))
			}
			enc := append(hdr, payload...)
			var m poolv1.LeaseResponse
			if err := proto.Unmarshal(enc, &m); err != nil {
				t.Fatalf("n=%d w=%d: proto.Unmarshal: %v", n, w, err)
			}
			if !bytes.Equal(m.GetData().GetData(), payload) || m.GetData().GetUpstreamWritten() != w {
				t.Fatalf("n=%d w=%d: proto reads %d bytes, written %d", n, w, len(m.GetData().GetData()), m.GetData().GetUpstreamWritten())
			}
			hlen, gw, ok := ParseRespDataHeader(enc[:min(len(enc), MaxRespDataHeader)], len(enc))
			if !ok || hlen != len(hdr) || gw != w {
				t.Fatalf("n=%d w=%d: ParseRespDataHeader = %d, %d, %v; want %d, %d, true", n, w, hlen, gw, ok, len(hdr), w)
			}
			// What proto.Marshal writes is read too (written after data).
			want, err := proto.Marshal(&m)
			if err != nil {
				t.Fatal(err)
			}
			if w == 0 {
				if hlen, _, ok := ParseRespDataHeader(want[:min(len(want), MaxRespDataHeader)], len(want)); !ok || hlen != len(hdr) {
					t.Fatalf("n=%d: proto.Marshal's frame not parsed", n)
				}
			}
		}
	}
}

func TestParseRespDataHeaderRefuses(t *testing.T) {
	good := append(AppendRespDataHeader(nil, 3, 5), "abc"...)
	tests := []struct {
		name  string
		b     []byte
		total int
	}{
		{"empty", nil, 0},
		{"short total", good, len(good) - 1},
		{"long total", good, len(good) + 1},
		{"zero written", append(append([]byte{2<<3 | 2, 7, 2 << 3, 0}, 1<<3|2, 3), "abc"...), 9},
		{"written after data", append(append([]byte{2<<3 | 2, 7, 1<<3 | 2, 3}, "abc"...), 2<<3, 5), 9},
		{"no payload", []byte{2<<3 | 2, 2, 2 << 3, 5}, 4},
	}
	for _, tt := range tests {
		total := tt.total
		if total == 0 {
			total = len(tt.b)
		}
		if _, _, ok := ParseRespDataHeader(tt.b, total); ok {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func FuzzParseRespDataHeader(f *testing.F) {
	f.Add(append(AppendRespDataHeader(nil, 3, 9), "abc"...))
	f.Add([]byte{2<<3 | 2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		hlen, w, ok := ParseRespDataHeader(b[:min(len(b), MaxRespDataHeader)], len(b))
		if !ok {
			return
		}
		var m poolv1.LeaseResponse
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatalf("accepted a frame proto refuses: %v", err)
		}
		if !bytes.Equal(m.GetData().GetData(), b[hlen:]) || m.GetData().GetUpstreamWritten() != w {
			t.Fatalf("parsed differently from proto")
		}
	})
}
