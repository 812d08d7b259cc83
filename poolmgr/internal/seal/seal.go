// Package seal encrypts small secrets (pool client keys) for storage with
// AES-256-GCM under a key poold reads from --secret-key-file.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length of a key: 32 bytes, for AES-256.
const KeySize = 32

// prefix marks the format of a sealed value: "v1." + base64url(nonce ||
// ciphertext || tag), without padding.
const prefix = "v1."

// ErrOpen is returned by Open for a value that is malformed, was sealed
// under another key, or was tampered with.
var ErrOpen = errors.New("seal: cannot decrypt: wrong key or corrupted value")

// Sealer seals and opens values under one key. It is safe for concurrent
// use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for a KeySize-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext, binding it to aad (which Open must be given
// again), under a fresh random nonce.
func (s *Sealer) Seal(plaintext, aad []byte) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails
	out := s.aead.Seal(nonce, nonce, plaintext, aad)
	return prefix + base64.RawURLEncoding.EncodeToString(out)
}

// Open decrypts a value from Seal. It returns an error wrapping ErrOpen if
// the value is malformed, was sealed under another key or with another aad,
// or was altered.
func (s *Sealer) Open(sealed string, aad []byte) ([]byte, error) {
	rest, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return nil, fmt.Errorf("%w: unknown format", ErrOpen)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) < s.aead.NonceSize()+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: malformed", ErrOpen)
	}
	n := s.aead.NonceSize()
	pt, err := s.aead.Open(nil, b[:n], b[n:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}
