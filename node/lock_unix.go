//go:build unix

package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir keeps dir to this process: an exclusive flock on dir/LOCK,
// which holds the pid of its holder for whoever is refused. Two ledgers on
// one data directory would overwrite each other's snapshot and bootstrap
// token, and with NATS embedded run two JetStream servers on one store. The
// kernel drops the lock when the process ends, however it ends (kill -9
// included), so a crash leaves nothing to clean up; the file itself stays,
// since removing it would let a third process lock a new file while a
// second still waits on the old one.
func lockDataDir(dir string) (unlock func() error, err error) {
	path := filepath.Join(dir, lockFile)
	// Not through a symbolic link: the lock file is truncated.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	fd := int(f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "unknown"
		if b, rerr := os.ReadFile(path); rerr == nil && strings.TrimSpace(string(b)) != "" {
			holder = strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by pid %s", ErrDataDirInUse, path, holder)
		}
		return nil, fmt.Errorf("lock the data directory: %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		_ = syscall.Flock(fd, syscall.LOCK_UN)
		f.Close()
		return nil, fmt.Errorf("lock the data directory: %s: %w", path, err)
	}
	return func() error {
		_ = syscall.Flock(fd, syscall.LOCK_UN)
		return f.Close()
	}, nil
}

// lockWaiting takes an exclusive flock on path, waiting for whoever holds
// it: two `ledger bootstrap` runs writing one --out must not interleave
// their pending files (the second would replace the first's secret, and
// the first would rename it into place as its own).
func lockWaiting(path string) (unlock func() error, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	fd := int(f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() error {
		_ = syscall.Flock(fd, syscall.LOCK_UN)
		return f.Close()
	}, nil
}
