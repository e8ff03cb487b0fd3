package vm

// UndoStack undoes the steps of an operation that failed part way: each
// step that succeeds adds how to undo itself, and Run undoes them, last
// first. Deferred Run is a no-op once the operation succeeds and calls
// Release.
type UndoStack []func()

// Add records how to undo the step just done.
func (u *UndoStack) Add(fn func()) { *u = append(*u, fn) }

// Run undoes the steps recorded, last first, and forgets them.
func (u *UndoStack) Run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// Release forgets the steps: the operation succeeded and keeps them.
func (u *UndoStack) Release() { *u = nil }
