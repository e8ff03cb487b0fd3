package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// healthFlags are run's docker-style health check flags.
type healthFlags struct {
	cmd         string
	interval    time.Duration
	timeout     time.Duration
	startPeriod time.Duration
	retries     int
	none        bool
	onFailure   string
}

func (h *healthFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&h.cmd, "health-cmd", "", "command to check health, run with /bin/sh -c in the VM")
	fl.DurationVar(&h.interval, "health-interval", 0, "time between health checks (default 30s)")
	fl.DurationVar(&h.timeout, "health-timeout", 0, "time a health check may take (default 30s)")
	fl.DurationVar(&h.startPeriod, "health-start-period", 0, "time after start when failing checks do not count")
	fl.IntVar(&h.retries, "health-retries", 0, "consecutive failures that make the VM unhealthy (default 3)")
	fl.BoolVar(&h.none, "no-healthcheck", false, "disable the image's health check")
	fl.StringVar(&h.onFailure, "health-on-failure", "none", "action when the VM turns unhealthy: none, kill, restart or stop")
}

// config returns the health check for the API (nil: the image's as is).
func (h *healthFlags) config() (*api.HealthConfig, string, error) {
	if err := options.ValidateOnFailure(h.onFailure); err != nil {
		return nil, "", err
	}
	onFailure := h.onFailure
	if onFailure == options.OnFailureNone {
		onFailure = ""
	}
	set := h.cmd != "" || h.interval != 0 || h.timeout != 0 || h.startPeriod != 0 || h.retries != 0
	if h.none {
		if set {
			return nil, "", errdefs.Invalid("--no-healthcheck conflicts with the --health-* options")
		}
		return &api.HealthConfig{Test: []string{"NONE"}}, onFailure, nil
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--health-interval", h.interval}, {"--health-timeout", h.timeout}, {"--health-start-period", h.startPeriod}} {
		if d.v < 0 {
			return nil, "", errdefs.Invalid(fmt.Sprintf("invalid %s %s: must not be negative", d.name, d.v))
		}
	}
	if h.retries < 0 {
		return nil, "", errdefs.Invalid(fmt.Sprintf("invalid --health-retries %d: must not be negative", h.retries))
	}
	if !set {
		return nil, onFailure, nil
	}
	c := &api.HealthConfig{Interval: api.Duration(h.interval), Timeout: api.Duration(h.timeout),
		StartPeriod: api.Duration(h.startPeriod), Retries: h.retries}
	if h.cmd != "" {
		c.Test = []string{"CMD-SHELL", h.cmd}
	}
	return c, onFailure, nil
}

// healthWord is how ps shows a health status, as docker's.
func healthWord(status string) string {
	if status == api.HealthStarting {
		return "health: starting"
	}
	return status
}
