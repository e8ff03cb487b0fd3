package api

import "time"

// CheckpointCreateRequest asks for a checkpoint of a running VM.
type CheckpointCreateRequest struct {
	// Name names the checkpoint: 1-63 letters, digits, '_', '.' or '-',
	// starting with a letter or digit.
	Name string `json:"name"`
	// LeaveRunning lets the VM run on once saved; without it the VM ends
	// as a stop would (docker's default).
	LeaveRunning bool `json:"leaveRunning,omitempty"`
}

// Checkpoint is a saved VM: its memory and device state and a copy of its
// own disk, which `start` with ?checkpoint=NAME resumes.
type Checkpoint struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Size is what the checkpoint takes on the host, in bytes.
	Size int64 `json:"size"`
	// StateSize is the size of the saved memory and device state.
	StateSize int64 `json:"stateSize"`
}
