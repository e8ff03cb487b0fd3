package agent

// Operations of an Open request (control protocol version 2).
const (
	// OpExec runs a command in the guest (ExecRequest); the channel
	// carries its stdin, stdout and stderr and ends with its exit.
	OpExec = "exec"
	// OpStats reports the guest's memory and load in the Reply.
	OpStats = "stats"
	// OpCopyOut sends Path as a tar stream (FrameStdout), then an exit.
	OpCopyOut = "copyout"
	// OpCopyIn extracts the tar stream the host sends (FrameStdin, then
	// FrameEOF) into the directory Path, then an exit.
	OpCopyIn = "copyin"
	// OpSetTime sets the guest's clock (CLOCK_REALTIME) to TimeNanos,
	// answered by a Reply: the host sends it after resuming a saved
	// guest, whose clock stood still while it was saved.
	OpSetTime = "settime"
	// OpSpec hands a guest restored from a template (Spec.Template) the
	// VM's own spec, with the host's time (TimeNanos) and fresh entropy
	// for its random pool, answered by a Reply once kiln-init took it;
	// kiln-init then goes on as after a cold boot. A guest that already
	// has its spec refuses it.
	OpSpec = "spec"
	// OpTop lists the guest's processes in the Reply (Processes), as
	// many as fit in one frame (Truncated when some did not).
	OpTop = "top"
)

// Hello is the first frame both ways.
type Hello struct {
	Version int `json:"version"`
	// Agent names the peer ("kiln-init", "kiln").
	Agent string `json:"agent,omitempty"`
}

// OpenRequest opens a channel. OpStop and OpSignal act on the VM's
// program and are answered by a Reply alone.
type OpenRequest struct {
	Op          string       `json:"op"`
	Exec        *ExecRequest `json:"exec,omitempty"`
	Signal      int          `json:"signal,omitempty"`
	GraceMillis int64        `json:"graceMillis,omitempty"`
	Path        string       `json:"path,omitempty"`
	// TimeNanos is the host's time for OpSetTime, in nanoseconds since
	// the Unix epoch.
	TimeNanos int64 `json:"timeNanos,omitempty"`
	// Spec and Entropy are OpSpec's: the VM's spec, and random bytes
	// from the host mixed into the guest's pool (credited) before the
	// program starts.
	Spec    *Spec  `json:"spec,omitempty"`
	Entropy []byte `json:"entropy,omitempty"`
	// Program, with OpSpec, is a file kiln-init copies off a disk into
	// its root before it takes the spec: the program of a bare VM.
	Program *ProgramDisk `json:"program,omitempty"`
}

// ProgramDisk is a file at the start of a disk: Size bytes from offset 0
// of the disk whose serial is Serial, to be written at Path (mode 0755).
type ProgramDisk struct {
	Serial string `json:"serial"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
}

// ExecRequest is a command to run in the guest, as docker exec takes it.
type ExecRequest struct {
	Args []string `json:"args"`
	// Env is added to the VM program's environment (KEY=VALUE).
	Env []string `json:"env,omitempty"`
	// WorkingDir defaults to the program's.
	WorkingDir string `json:"workingDir,omitempty"`
	// User is name|uid[:group|gid] as --user takes it; empty means the
	// program's user.
	User string `json:"user,omitempty"`
	// TTY gives the command a pseudo-terminal of Rows x Cols as its
	// controlling terminal and stdin, stdout and stderr (all output comes
	// as FrameStdout).
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin: the host sends the command's stdin; without it the command
	// reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
}

// Reply answers an OpenRequest. Error set means the operation did not
// happen (for an exec, ExitCode is then 126 or 127 as docker reports a
// command that cannot run, or 125).
type Reply struct {
	Error    string `json:"error,omitempty"`
	ExitCode int    `json:"exitCode,omitempty"`
	PID      int    `json:"pid,omitempty"`
	Stats    *Stats `json:"stats,omitempty"`
	// Processes and Truncated answer OpTop.
	Processes []Process `json:"processes,omitempty"`
	Truncated bool      `json:"truncated,omitempty"`
}

// Process is one of the guest's processes, as its /proc shows it. It
// comes from the guest: a host prints it only sanitized.
type Process struct {
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	UID  uint32 `json:"uid"`
	// State is the kernel's one-letter state (R, S, D, Z, ...).
	State string `json:"state"`
	// CPUSeconds is the user and system time it used.
	CPUSeconds float64 `json:"cpuSeconds"`
	// RSSBytes is its resident memory.
	RSSBytes uint64 `json:"rssBytes"`
	// Cmd is its command line, arguments joined by spaces ([comm] for a
	// kernel thread), at most MaxCmd bytes.
	Cmd string `json:"cmd"`
}

// MaxCmd bounds a Process's Cmd.
const MaxCmd = 200

// Control is a request on an open exec channel: a window size (Rows and
// Cols both set) or a signal to the command.
type Control struct {
	Rows   uint16 `json:"rows,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Signal int    `json:"signal,omitempty"`
}

// ExitStatus ends a channel.
type ExitStatus struct {
	ExitCode int    `json:"exitCode"`
	Signal   int    `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Stats is the guest's view of itself.
type Stats struct {
	MemTotal     uint64     `json:"memTotal"`
	MemAvailable uint64     `json:"memAvailable"`
	Load         [3]float64 `json:"load"`
	Uptime       float64    `json:"uptime"`
	Processes    int        `json:"processes"`
}
