package main

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The CLI reaches VMs, images and the supervisor only through the daemon's
// API (client): the daemon is their one owner. Its own code, tests aside,
// must not import the packages that own them.
func TestCLIImportsNoOwnerOfVMsOrImages(t *testing.T) {
	forbidden := map[string]bool{
		"kiln.dev/kiln/internal/vm":         true,
		"kiln.dev/kiln/internal/image":      true,
		"kiln.dev/kiln/internal/supervisor": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if forbidden[p] {
				t.Errorf("%s imports %s: go through the daemon's API (client) instead", f, p)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no non-test Go files found in cmd/kiln")
	}
}
