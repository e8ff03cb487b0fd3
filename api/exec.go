package api

import "time"

// ExecConfig is a command to run in a running VM (POST
// /v1/vms/{ref}/exec, upgraded to a stream: see StreamFrame).
type ExecConfig struct {
	Cmd        []string `json:"cmd"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	User       string   `json:"user,omitempty"`
	Tty        bool     `json:"tty,omitempty"`
	Stdin      bool     `json:"stdin,omitempty"`
	// Rows and Cols are the tty's first size.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// ExecExit ends an exec stream. Error is set when the command did not run
// to its end (it could not start, or the guest agent went away); ExitCode
// is then docker's code for it (126, 127) or 125.
type ExecExit struct {
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
}

// ExecControl is sent by the client during an exec: a new tty size or a
// signal for the command.
type ExecControl struct {
	Rows   uint16 `json:"rows,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Signal int    `json:"signal,omitempty"`
}

// HealthConfig is a VM's health check, as docker's.
type HealthConfig struct {
	// Test is ["CMD", args...], ["CMD-SHELL", command] or ["NONE"]; empty
	// takes the image's.
	Test        []string `json:"test,omitempty"`
	Interval    Duration `json:"interval,omitempty"`
	Timeout     Duration `json:"timeout,omitempty"`
	StartPeriod Duration `json:"startPeriod,omitempty"`
	Retries     int      `json:"retries,omitempty"`
}

// Health statuses (Health.Status), as docker's.
const (
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Health is a running VM's health.
type Health struct {
	// Status is starting, healthy or unhealthy.
	Status        string         `json:"status"`
	FailingStreak int            `json:"failingStreak"`
	Log           []HealthResult `json:"log,omitempty"`
}

// HealthResult is one health check's outcome.
type HealthResult struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exitCode"`
	Output   string    `json:"output"`
}

// Stats is a running VM's view of itself, from its guest agent.
type Stats struct {
	// MemTotal and MemAvailable are the guest's, in bytes.
	MemTotal     uint64 `json:"memTotal"`
	MemAvailable uint64 `json:"memAvailable"`
	// Load is the guest's load average over 1, 5 and 15 minutes.
	Load      [3]float64 `json:"load"`
	Uptime    float64    `json:"uptime"`
	Processes int        `json:"processes"`
}

// Top answers GET /v1/vms/{ref}/top: the guest's processes, by PID.
type Top struct {
	Processes []Process `json:"processes"`
	// Truncated: the guest has more processes than one answer holds.
	Truncated bool `json:"truncated,omitempty"`
}

// Process is one of a guest's processes. Cmd has its control characters
// replaced by '?': it is the guest's to choose.
type Process struct {
	PID        int     `json:"pid"`
	PPID       int     `json:"ppid"`
	UID        uint32  `json:"uid"`
	State      string  `json:"state"`
	CPUSeconds float64 `json:"cpuSeconds"`
	RSSBytes   uint64  `json:"rssBytes"`
	Cmd        string  `json:"cmd"`
}
