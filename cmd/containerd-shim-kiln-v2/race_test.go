//go:build race

package main

// raceEnabled: the tests run with -race, so the shim and kiln binaries they
// drive are built with it too; the shims' reports land under the test's
// GORACE log_path (see shimEnv.raceReports).
const raceEnabled = true
