package vm

import (
	"encoding/json"
	"time"

	"kiln.dev/kiln/api"
)

// legacySpec is what a spec written by an older kiln, whose Spec copied
// the request's fields instead of holding the request, says differently:
// the ulimits were "rlimits", and the boot timeout and the health check's
// durations were numbers of nanoseconds, not api.Duration strings. Every
// other field had the name and form it has now. Such a spec is in the
// vm.json of a VM that kiln created, and in the state record of a VM an
// even older kiln created (supervisor's record).
type legacySpec struct {
	Rlimits     []api.Ulimit  `json:"rlimits"`
	BootTimeout time.Duration `json:"bootTimeout"`
	// Healthcheck had the fields and form of an image's HEALTHCHECK.
	Healthcheck *api.ImageHealthcheck `json:"healthcheck"`
}

// legacyKeys are the keys whose form tells a legacy spec.
var legacyKeys = []string{"rlimits", "bootTimeout", "healthcheck"}

// UnmarshalJSON reads a spec as this kiln writes it, or as an older kiln
// did (legacySpec): the fields that differ are decoded in their old form
// and put into the request, the others as they are.
func (s *Spec) UnmarshalJSON(b []byte) error {
	type current Spec // Spec's fields, without this method
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return err
	}
	if !isLegacySpec(fields) {
		return json.Unmarshal(b, (*current)(s))
	}
	var old legacySpec
	if err := json.Unmarshal(b, &old); err != nil {
		return err
	}
	for _, k := range legacyKeys {
		delete(fields, k)
	}
	rest, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(rest, (*current)(s)); err != nil {
		return err
	}
	s.Ulimits = old.Rlimits
	s.BootTimeout = api.Duration(old.BootTimeout)
	s.Healthcheck = healthFromImage(old.Healthcheck)
	return nil
}

// isLegacySpec reports whether a spec's fields are in an older kiln's
// form: it has rlimits, or a duration that is a number. A legacy spec
// without any of those reads the same either way.
func isLegacySpec(fields map[string]json.RawMessage) bool {
	if _, ok := fields["rlimits"]; ok {
		return true
	}
	if isNumber(fields["bootTimeout"]) {
		return true
	}
	var h map[string]json.RawMessage
	if json.Unmarshal(fields["healthcheck"], &h) == nil {
		for _, k := range []string{"interval", "timeout", "startPeriod"} {
			if isNumber(h[k]) {
				return true
			}
		}
	}
	return false
}

func isNumber(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9')
}
