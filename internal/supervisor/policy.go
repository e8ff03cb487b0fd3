package supervisor

import (
	"fmt"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// Backoff is the delay before the n-th consecutive restart (n from 0):
// 100 ms doubling up to one minute, as docker's.
func Backoff(n int) time.Duration {
	d := 100 * time.Millisecond
	for i := 0; i < n && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

// BackoffReset is how long a VM must run for its restart backoff to start
// again from 100 ms.
const BackoffReset = 10 * time.Second

// Options are how the supervisor keeps a VM, beside what it runs: the
// restart policy, auto-remove, log bounds, stop timeout and health action
// of its request, in the forms the supervisor works with. They are not a
// second copy of the request: OptionsOf derives them from the VM's spec,
// whose request (in the VM's vm.json) holds them once, resolved. Nothing
// changes them after the VM is created, so nothing needs to store them
// apart. The JSON form is that of the state records an older kiln wrote,
// which held them (see record).
type Options struct {
	Restart    options.RestartPolicy `json:"restart"`
	AutoRemove bool                  `json:"autoRemove,omitempty"`
	Log        options.LogConfig     `json:"log"`
	// StopGrace is the time the program has after its stop signal; 0 means
	// options.DefaultStopGrace.
	StopGrace time.Duration `json:"stopGrace,omitempty"`
	// HealthOnFailure is what an unhealthy VM gets: none, kill, restart
	// or stop (health.go).
	HealthOnFailure string `json:"healthOnFailure,omitempty"`
}

// OptionsOf derives a VM's options from its request.
func OptionsOf(c *api.VMConfig) Options {
	return Options{
		Restart:         options.RestartPolicy(c.Restart),
		AutoRemove:      c.AutoRemove,
		Log:             c.Log,
		StopGrace:       time.Duration(c.StopTimeout) * time.Second,
		HealthOnFailure: c.HealthOnFailure,
	}
}

// setIn writes o into the request c: a Create's resolved options, and
// those an older kiln's record held (see record). OptionsOf(c) is then o,
// but for a stop grace in part of a second.
func (o Options) setIn(c *api.VMConfig) {
	c.Restart = api.RestartPolicy(o.Restart)
	c.AutoRemove = o.AutoRemove
	c.Log = o.Log
	c.StopTimeout = int(o.StopGrace / time.Second)
	c.HealthOnFailure = o.HealthOnFailure
}

// Resolve fills in o's defaults; it never fails.
func (o *Options) Resolve() {
	if o.Restart.Name == "" {
		o.Restart.Name = options.RestartNo
	}
	if o.Log.MaxSize == 0 {
		o.Log.MaxSize = options.DefaultLogMaxSize
	}
	if o.Log.MaxFiles == 0 {
		o.Log.MaxFiles = options.DefaultLogMaxFiles
	}
	if o.StopGrace == 0 {
		o.StopGrace = options.DefaultStopGrace
	}
}

// Validate only checks o: a zero field is judged as its default, and o is
// left as it is.
func (o Options) Validate() error {
	o.Resolve()
	if err := o.Restart.Validate(); err != nil {
		return err
	}
	if o.AutoRemove && o.Restart.Name != options.RestartNo {
		return errdefs.Invalid(fmt.Sprintf("conflicting options: --rm and --restart %s (a VM removed when it ends cannot be restarted)", o.Restart))
	}
	if o.Log.MaxSize < 1024 || o.Log.MaxFiles < 1 {
		return errdefs.Invalid(fmt.Sprintf("invalid log config: max-size %d (at least 1k) and max-file %d (at least 1)", o.Log.MaxSize, o.Log.MaxFiles))
	}
	if err := options.ValidateOnFailure(o.HealthOnFailure); err != nil {
		return err
	}
	if o.StopGrace < 0 {
		return errdefs.Invalid(fmt.Sprintf("invalid stop timeout %s: must be 0 or more", o.StopGrace))
	}
	return nil
}
