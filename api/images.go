package api

import "encoding/json"

// JSONMessage is one line of a pull or push progress stream
// (application/x-ndjson), in docker's JSON message shape:
//
//	{"status":"Downloading","id":"sha256:0123456789ab","progressDetail":{"current":1048576,"total":3145728}}
//	{"status":"Download complete","id":"sha256:0123456789ab","progressDetail":{"current":3145728,"total":3145728}}
//	{"aux":{"id":"sha256:…", …}}
//	{"error":"pulling …: unauthorized","errorDetail":{"code":400,"message":"pulling …: unauthorized"}}
type JSONMessage struct {
	// Status is one of the Status* constants, or a line of text.
	Status string `json:"status,omitempty"`
	// ID is the short digest ("sha256:" and 12 hex digits) of the blob the
	// message is about; empty for a push, which reports totals.
	ID             string          `json:"id,omitempty"`
	ProgressDetail *ProgressDetail `json:"progressDetail,omitempty"`
	// Aux is the result: the Image of a pull.
	Aux json.RawMessage `json:"aux,omitempty"`
	// Error and ErrorDetail end a stream that failed after it began.
	Error       string       `json:"error,omitempty"`
	ErrorDetail *ErrorDetail `json:"errorDetail,omitempty"`
}

// The statuses of progress messages.
const (
	StatusDownloading      = "Downloading"
	StatusDownloadComplete = "Download complete"
	StatusAlreadyExists    = "Already exists"
	StatusPushing          = "Pushing"
	StatusPushed           = "Pushed"
)

// ProgressDetail is the bytes done of a blob (or of a whole push) and the
// bytes expected; Total is 0 when unknown.
type ProgressDetail struct {
	Current int64 `json:"current"`
	Total   int64 `json:"total,omitempty"`
}

// ErrorDetail is the error that ended a stream. Code is the HTTP status
// the error would have had as a plain answer (400, 404, 409, 503 or 500).
type ErrorDetail struct {
	Code    int    `json:"code,omitempty"`
	Message string `json:"message"`
}

// TagRequest points the tag Dst at the stored image Src (tag, digest or
// ID).
type TagRequest struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// ImageDeleted is one thing an image removal did, as docker reports it:
// a tag removed (Untagged, fully qualified) or an image deleted (Deleted,
// its ID).
type ImageDeleted struct {
	Untagged string `json:"untagged,omitempty"`
	Deleted  string `json:"deleted,omitempty"`
}

// PruneResponse answers POST /v1/images/prune.
type PruneResponse struct {
	// SpaceReclaimed is the bytes freed.
	SpaceReclaimed int64 `json:"spaceReclaimed"`
}
