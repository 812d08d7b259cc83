package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Backuper is implemented by stores that can write a consistent snapshot of
// their whole database; *store.Store does.
type Backuper interface {
	Backup(w io.Writer) (int64, error)
}

// ContextBackuper is implemented by stores that read their snapshot over
// the network, bounded by ctx, and write it in the bbolt store's file
// format; *etcdstore.Store does.
type ContextBackuper interface {
	BackupContext(ctx context.Context, w io.Writer) (int64, error)
}

// Backup writes a consistent snapshot of the store's database to w and
// returns its size: a bbolt store file (package store's format) whichever
// backend the Manager runs on, so a backup of an etcd-backed fleet starts
// a single poold --store bolt. The snapshot is taken into a temporary
// file first, so the store's read transaction never waits on w (a
// network stream). It returns an error wrapping errors.ErrUnsupported if
// the store cannot back up. Safe for concurrent use.
func (m *Manager) Backup(ctx context.Context, w io.Writer) (int64, error) {
	cb, isCtx := m.store.(ContextBackuper)
	b, ok := m.store.(Backuper)
	if !ok && !isCtx {
		return 0, fmt.Errorf("backup: %w", errors.ErrUnsupported)
	}
	f, err := os.CreateTemp("", "poolplane-backup-*.db")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer func() {
		_ = f.Close() // a second Close after a successful copy is harmless
		_ = os.Remove(f.Name())
	}()
	if isCtx {
		_, err = cb.BackupContext(ctx, f)
	} else {
		_, err = b.Backup(f)
	}
	if err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	n, err := io.Copy(ctxWriter{ctx: ctx, w: w}, f)
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// ctxWriter stops a copy once ctx ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
