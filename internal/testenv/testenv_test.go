package testenv

import "testing"

func TestVMTests(t *testing.T) {
	for _, tc := range []struct {
		val  string
		want bool
	}{
		{"", false}, {"0", false}, {"false", false}, {"banana", false},
		{"1", true}, {"true", true}, {"TRUE", true},
	} {
		t.Setenv(VMTestsEnv, tc.val)
		if got := VMTests(); got != tc.want {
			t.Errorf("%s=%q: VMTests() = %v, want %v", VMTestsEnv, tc.val, got, tc.want)
		}
	}
}

func TestNeedVMSkipsWhenOff(t *testing.T) {
	t.Setenv(VMTestsEnv, "")
	t.Run("gated", func(t *testing.T) {
		NeedVM(t)
		t.Error("NeedVM did not skip with the VM tier off")
	})
}
