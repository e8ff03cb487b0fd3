package options

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels(nil, []string{"tier=front", "empty", "url=http://x/?a=b", "tier=back"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tier": "back", "empty": "", "url": "http://x/?a=b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLabels = %v, want %v", got, want)
	}
	for _, bad := range []string{"=v", "", "a b=c"} {
		if _, err := ParseLabels(nil, []string{bad}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "invalid label") {
			t.Errorf("ParseLabels(%q) = %v, want an invalid-label error", bad, err)
		}
	}
}

func TestParseLabelFile(t *testing.T) {
	got, err := ParseLabelFile(map[string]string{"a": "1"}, strings.NewReader("# owners\n\nteam=ops\n  a=2  \n"), "labels.txt")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"a": "2", "team": "ops"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLabelFile = %v, want %v", got, want)
	}
	_, err = ParseLabelFile(nil, strings.NewReader("ok=1\nbad key=2\n"), "labels.txt")
	if err == nil || !strings.Contains(err.Error(), "labels.txt line 2") {
		t.Errorf("a bad line: %v, want the file and line named", err)
	}
}
