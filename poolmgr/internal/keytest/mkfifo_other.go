//go:build !unix

package keytest

import "errors"

func mkfifo(string) error { return errors.ErrUnsupported }
