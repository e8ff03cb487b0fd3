// Package errdefs holds kiln's sentinel errors. Code anywhere wraps them
// (fmt.Errorf("…: %w", errdefs.ErrInvalidArgument)); the CLI maps them to
// exit codes and the API to HTTP status codes, each in one place.
package errdefs

import "errors"

var (
	// ErrInvalidArgument: the request is malformed or names a bad value.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request conflicts with the current state (a name in
	// use, a running VM).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: something kiln needs on the host is missing.
	ErrUnavailable = errors.New("unavailable")
	// ErrBootFailed: the VM did not reach kiln-init.
	ErrBootFailed = errors.New("boot failed")
)

// Mark returns err classified as kind (errors.Is(Mark(err, kind), kind)),
// with err's message unchanged.
func Mark(err, kind error) error {
	if err == nil {
		return nil
	}
	return &marked{err: err, kind: kind}
}

type marked struct{ err, kind error }

func (m *marked) Error() string   { return m.err.Error() }
func (m *marked) Unwrap() []error { return []error{m.err, m.kind} }

// Invalid wraps msg as an ErrInvalidArgument.
func Invalid(msg string) error { return &wrapped{msg: msg, err: ErrInvalidArgument} }

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }
