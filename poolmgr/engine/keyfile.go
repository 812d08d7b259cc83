package engine

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Bounds of reading TLSConfig.ClientKeyFile, a path any pool writer
// chooses on the poold host.
const (
	// MaxKeyFileSize is the largest key file read: PEM keys are a few KiB
	// (an RSA-8192 key is under 7 KiB).
	MaxKeyFileSize = 64 << 10
	// KeyFileTimeout bounds the read of a key file, on a slow or hung
	// file system.
	KeyFileTimeout = 2 * time.Second
)

// ErrClientKeyFile is the one error of a tls.client_key_file that yields no
// private key for the client certificate: whether the path is missing,
// unreadable, not a regular file, too large, slow, or holds anything but the
// matching PEM key, the error is the same, so a pool writer learns nothing
// about the files on the poold host.
var ErrClientKeyFile = errors.New("client_key_file: no private key for client_cert_pem could be read from that path: " +
	"it must be a regular file, readable by poold, of at most 64 KiB, holding the PEM private key of the certificate")

// readKeyFile reads a key file within the bounds above. Only regular files
// are read: the file is opened without blocking (a FIFO would otherwise
// hang the open) and its type checked on the open descriptor, so devices
// (/dev/zero), FIFOs, sockets and directories are refused before a byte is
// read. Every failure is ErrClientKeyFile.
//
// The read runs on its own goroutine so that a hung file system cannot
// hold the caller beyond KeyFileTimeout; that goroutine ends when the read
// returns, and never blocks on its result.
func readKeyFile(name string) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	donec := make(chan result, 1) // size 1: the reader never waits for a caller that timed out
	go func() {
		b, err := readRegularFile(name, MaxKeyFileSize)
		donec <- result{b, err}
	}()
	t := time.NewTimer(KeyFileTimeout)
	defer t.Stop()
	select {
	case r := <-donec:
		if r.err != nil {
			return nil, ErrClientKeyFile
		}
		return r.b, nil
	case <-t.C:
		return nil, ErrClientKeyFile
	}
}

// readRegularFile reads name if it is a regular file of at most limit
// bytes.
func readRegularFile(name string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only: nothing to flush
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// checkCertPEM reports whether certPEM's first certificate parses (the
// leaf tls.X509KeyPair checks the key against). It runs before a key file
// is read, so a bad certificate is reported the same whatever the file.
func checkCertPEM(certPEM string) error {
	rest := []byte(certPEM)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return errors.New("client_cert_pem holds no PEM certificate")
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("client_cert_pem: %w", err)
		}
		return nil
	}
}
