package server

import (
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// backupChunk is the most file bytes one BackupDatabaseResponse carries.
const backupChunk = 32<<10 - 64

// BackupDatabase streams a consistent snapshot of the database: a bbolt
// store file that poold --store bolt starts from, whether the Manager runs
// on the bbolt store or on the etcd store (whose configuration is read at
// one revision and written into such a file).
func (s *AdminServer) BackupDatabase(_ *poolv1.BackupDatabaseRequest, stream poolv1.PoolAdminService_BackupDatabaseServer) error {
	w := &chunkWriter{send: stream.Send}
	if _, err := s.core.Backup(stream.Context(), w); err != nil {
		return toStatus(err)
	}
	return nil
}

// chunkWriter sends what is written as BackupDatabaseResponse chunks.
type chunkWriter struct {
	send func(*poolv1.BackupDatabaseResponse) error
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), backupChunk)
		if err := w.send(&poolv1.BackupDatabaseResponse{Chunk: p[:k]}); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}
