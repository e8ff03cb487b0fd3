package image

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes a flock(2) lock (unix.LOCK_SH or unix.LOCK_EX) on path,
// creating it if needed, and returns the function that releases it.
//
// flock locks belong to the open file description, so two goroutines of one
// process that each call lockFile exclude each other just as two processes
// do; no extra in-process mutex is needed.
func lockFile(path string, how int) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		// Closing the descriptor drops the lock; the explicit unlock only
		// makes the release visible before Close's error handling.
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}
