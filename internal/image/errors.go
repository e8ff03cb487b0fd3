package image

import "kiln.dev/kiln/internal/errdefs"

// The sentinel errors below classify every error this package returns, so
// that callers test them with errors.Is instead of matching strings. Errors
// are wrapped with context ("pulling alpine: fetching layer sha256:…: …")
// around exactly one of these where a class applies.
//
// They are kiln's own sentinels (package errdefs) or wrap one of them, so
// that an image error needs no translation: errors.Is(err, ErrNotFound) and
// errors.Is(err, errdefs.ErrNotFound) agree, and the daemon maps an image
// error to the same HTTP status whichever endpoint met it.
var (
	// ErrNotFound means the image, tag, blob or platform asked for does not
	// exist in the store or in the registry. It is errdefs.ErrNotFound.
	ErrNotFound = errdefs.ErrNotFound

	// ErrInvalidArgument means the caller passed something malformed: a bad
	// reference, platform or path, or a layer tar that breaks the rules
	// (an entry escaping the root, an absurd size). It is
	// errdefs.ErrInvalidArgument.
	ErrInvalidArgument = errdefs.ErrInvalidArgument

	// ErrAmbiguous means an ID prefix matched more than one image. It wraps
	// ErrInvalidArgument, so callers that only know that class still work.
	ErrAmbiguous = &classError{msg: "ambiguous image reference", class: ErrInvalidArgument}

	// ErrTooLarge means an image passes one of the limits that bound what
	// building its root filesystem may cost: entries, names, symlink
	// targets and xattrs held in memory, a layer's uncompressed size or
	// expansion, a file's size (limits in flatten.go, stated in FORMAT.md).
	// The message names the layer, the limit and the value. It wraps
	// ErrInvalidArgument: the image is at fault, not the host.
	ErrTooLarge = &classError{msg: "too large", class: ErrInvalidArgument}

	// ErrConflict means the operation clashes with the current state. It
	// is errdefs.ErrConflict.
	ErrConflict = errdefs.ErrConflict

	// ErrCorrupt means content did not match its digest or size, or a stored
	// file could not be parsed: the data was damaged in transit or at rest.
	// It wraps ErrInvalidArgument: the content is at fault.
	ErrCorrupt = &classError{msg: "corrupt content", class: ErrInvalidArgument}

	// ErrUnsupported means the content is valid but this package does not
	// handle it: a foreign or unknown layer media type, a schema 1 manifest,
	// an image for another platform, an unknown tar entry type. It wraps
	// ErrInvalidArgument.
	ErrUnsupported = &classError{msg: "unsupported", class: ErrInvalidArgument}

	// ErrUnauthorized means the registry refused the credentials (or the
	// lack of them). It wraps ErrInvalidArgument: the request's
	// credentials are at fault, whichever API call led to the pull.
	ErrUnauthorized = &classError{msg: "unauthorized", class: ErrInvalidArgument}

	// ErrUnavailable means the host lacks what an operation needs: a host
	// tool (tar2sqfs), whose Debian package the message names, or free
	// space beyond kiln's reserve for building a root filesystem. It is
	// errdefs.ErrUnavailable.
	ErrUnavailable = errdefs.ErrUnavailable
)

// classError is a sentinel that is also a member of a broader class.
type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }
