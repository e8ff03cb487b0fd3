package vm

import (
	"slices"
	"testing"
)

func TestUndoStack(t *testing.T) {
	var got []int
	var u UndoStack
	for i := range 3 {
		u.Add(func() { got = append(got, i) })
	}
	u.Run()
	u.Run() // once only
	if want := []int{2, 1, 0}; !slices.Equal(got, want) {
		t.Errorf("undone %v, want %v", got, want)
	}
	got = nil
	u.Add(func() { got = append(got, 9) })
	u.Release()
	u.Run()
	if got != nil {
		t.Errorf("released steps undone: %v", got)
	}
}
