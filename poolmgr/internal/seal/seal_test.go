package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	key := bytes.Repeat([]byte{7}, KeySize)
	s, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
	a, b := s.Seal(secret, []byte("ctx")), s.Seal(secret, []byte("ctx"))
	if a == b {
		t.Fatal("two seals of one value are equal: nonce reuse")
	}
	if strings.Contains(a, "PRIVATE") || !strings.HasPrefix(a, "v1.") {
		t.Fatalf("sealed %q", a)
	}
	got, err := s.Open(a, []byte("ctx"))
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open(a, []byte("other")); !errors.Is(err, ErrOpen) {
		t.Fatalf("other aad: %v", err)
	}
	other, _ := New(bytes.Repeat([]byte{8}, KeySize))
	if _, err := other.Open(a, []byte("ctx")); !errors.Is(err, ErrOpen) {
		t.Fatalf("other key: %v", err)
	}
	// One character in the middle, where all six bits of a base64
	// character are payload, changed to another: the last characters of an
	// unpadded encoding carry bits the decoder ignores, and may already be
	// what a fixed replacement writes.
	i := len(a) / 2
	c := byte('A')
	if a[i] == c {
		c = 'B'
	}
	tampered := a[:i] + string(c) + a[i+1:]
	if _, err := s.Open(tampered, []byte("ctx")); !errors.Is(err, ErrOpen) {
		t.Fatalf("tampered: %v", err)
	}
	for _, bad := range []string{"", "v1.", "v2.abc", "v1.!!"} {
		if _, err := s.Open(bad, nil); !errors.Is(err, ErrOpen) {
			t.Fatalf("Open(%q): %v", bad, err)
		}
	}
	if _, err := New(key[:16]); err == nil {
		t.Fatal("16-byte key accepted")
	}
}
