//go:build !unix

package poolmgr

import "errors"

func mkfifo(string) error { return errors.ErrUnsupported }
