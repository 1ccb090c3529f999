//go:build !unix

package node

// lockDataDir does not lock where flock does not exist: the ledger is built
// and run on Linux (the image) and developed on Unix-likes.
func lockDataDir(string) (unlock func() error, err error) {
	return func() error { return nil }, nil
}

// lockWaiting does not lock where flock does not exist (see lockDataDir).
func lockWaiting(string) (unlock func() error, err error) {
	return func() error { return nil }, nil
}
