//go:build race

package main

// raceEnabled: the tests run with -race, so the kiln binary they drive (and
// so the daemon) is built with it too, and its reports land in daemon.log.
const raceEnabled = true
