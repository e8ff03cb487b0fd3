package vm

import (
	"fmt"
	"strings"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// HealthConfig is a health check, as docker's HEALTHCHECK and --health-*:
// the API's type itself. Test is ["CMD", args...], ["CMD-SHELL", command],
// or ["NONE"] (no check), empty meaning the image's; zero durations and
// retries mean the image's, then the defaults.
type HealthConfig = api.HealthConfig

// HealthEnabled reports whether h checks anything.
func HealthEnabled(h *HealthConfig) bool {
	return h != nil && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// ValidateHealth checks h's form.
func ValidateHealth(h *HealthConfig) error {
	if h == nil {
		return nil
	}
	if len(h.Test) > 0 {
		switch h.Test[0] {
		case "NONE":
		case "CMD", "CMD-SHELL":
			if len(h.Test) < 2 || strings.TrimSpace(strings.Join(h.Test[1:], "")) == "" {
				return errdefs.Invalid(fmt.Sprintf("invalid health check %q: %s needs a command", h.Test, h.Test[0]))
			}
		default:
			return errdefs.Invalid(fmt.Sprintf("invalid health check %q: the test starts with CMD, CMD-SHELL or NONE", h.Test))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		min  time.Duration
	}{{"interval", time.Duration(h.Interval), time.Millisecond}, {"timeout", time.Duration(h.Timeout), time.Millisecond}, {"start period", time.Duration(h.StartPeriod), 0}} {
		if d.v != 0 && d.v < d.min || d.v < 0 {
			return errdefs.Invalid(fmt.Sprintf("invalid health %s %s: must be positive", d.name, d.v))
		}
	}
	if h.Retries < 0 {
		return errdefs.Invalid(fmt.Sprintf("invalid health retries %d: must be 0 or more", h.Retries))
	}
	return nil
}

// healthFromImage is an image's HEALTHCHECK as a health check (its
// durations are nanoseconds); nil for nil.
func healthFromImage(h *api.ImageHealthcheck) *HealthConfig {
	if h == nil {
		return nil
	}
	return &HealthConfig{Test: h.Test, Interval: api.Duration(h.Interval), Timeout: api.Duration(h.Timeout),
		StartPeriod: api.Duration(h.StartPeriod), Retries: h.Retries}
}

// mergeHealth fills the zero fields of user (the run's flags) from image
// (the image's HEALTHCHECK), as docker does; either may be nil.
func mergeHealth(user, image *HealthConfig) *HealthConfig {
	if user == nil {
		if image == nil {
			return nil
		}
		c := *image
		return &c
	}
	c := *user
	if image != nil {
		if len(c.Test) == 0 {
			c.Test = image.Test
		}
		if c.Interval == 0 {
			c.Interval = image.Interval
		}
		if c.Timeout == 0 {
			c.Timeout = image.Timeout
		}
		if c.StartPeriod == 0 {
			c.StartPeriod = image.StartPeriod
		}
		if c.Retries == 0 {
			c.Retries = image.Retries
		}
	}
	return &c
}
