package commands_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// netHTTP is the one standard-library package the domain must not use
// either (spelled in parts so that a grep for imports of it does not find
// this test).
var netHTTP = strings.Join([]string{"net", "http"}, "/")

// TestBoundary_StandardLibraryOnly guards the domain: commands imports
// only the standard library, so it can never depend on NATS, bbolt or
// net/http, directly or through another package.
func TestBoundary_StandardLibraryOnly(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") || path == netHTTP {
				t.Errorf("%s imports %q: commands must use the standard library only (and not net/http)", name, path)
			}
		}
	}
}
