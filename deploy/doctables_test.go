package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDocsListFuzzTargetsAndBenchmarks: docs/testing.md's fuzz target table
// and docs/benchmarks.md's "What there is" table name every fuzz target
// and benchmark the repository defines, each in its package, and nothing
// else. Four of each had gone unlisted (review r3s29 F2).
func TestDocsListFuzzTargetsAndBenchmarks(t *testing.T) {
	root := repoRoot(t)
	defined := testFuncs(t, root)
	for _, tc := range []struct {
		doc, heading, kind string
	}{
		{"docs/testing.md", "### Fuzz targets", "Fuzz"},
		{"docs/benchmarks.md", "## What there is", "Benchmark"},
	} {
		listed := docTableFuncs(t, filepath.Join(root, tc.doc), tc.heading)
		var want []string
		for _, f := range defined {
			if strings.HasPrefix(f, tc.kind) {
				want = append(want, f)
			}
		}
		for _, f := range listed {
			if !slices.Contains(want, f) {
				t.Errorf("%s, %q, lists %s: no such %s function in that package", tc.doc, tc.heading, f, tc.kind)
			}
		}
		for _, f := range want {
			if !slices.Contains(listed, f) {
				t.Errorf("%s, %q, does not list %s", tc.doc, tc.heading, f)
			}
		}
	}
}

// testFuncs returns the fuzz targets and benchmarks the module's test
// files define, as "FuncName pkg/dir": top-level functions named Fuzz... or
// Benchmark... taking a *testing.F or *testing.B, as go test runs them.
func testFuncs(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// As go test sees packages: not testdata, vendor, or a
			// directory starting with a dot or an underscore.
			if name := d.Name(); path != root && (name == "testdata" || name == "vendor" || name[0] == '.' || name[0] == '_') {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		for _, decl := range file.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || len(fn.Type.Params.List) != 1 {
				continue
			}
			star, ok := fn.Type.Params.List[0].Type.(*ast.StarExpr)
			if !ok {
				continue
			}
			sel, ok := star.X.(*ast.SelectorExpr)
			if !ok {
				continue
			}
			name := fn.Name.Name
			if strings.HasPrefix(name, "Fuzz") && sel.Sel.Name == "F" || strings.HasPrefix(name, "Benchmark") && sel.Sel.Name == "B" {
				out = append(out, name+" "+filepath.ToSlash(dir))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var backticked = regexp.MustCompile("`([^`]+)`")

// docTableFuncs returns what the table under heading in the markdown file
// lists, as "FuncName pkg/dir": each name in backticks in a row's first
// cell, in the package its second cell names.
func docTableFuncs(t *testing.T, path, heading string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	start := strings.Index(doc, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("%s has no section %q", path, heading)
	}
	var out []string
	rows := 0
	for _, line := range strings.Split(doc[start+len(heading)+2:], "\n") {
		if strings.HasPrefix(line, "#") {
			break // the next section
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || strings.TrimSpace(cells[0]) != "" {
			if rows > 0 {
				break // the table ended
			}
			continue
		}
		if rows++; rows <= 2 {
			continue // the header and the --- row
		}
		pkg := backticked.FindAllStringSubmatch(cells[2], -1)
		if len(pkg) != 1 {
			t.Errorf("%s: a row whose package cell is not one package: %q", path, line)
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
			out = append(out, m[1]+" "+pkg[0][1])
		}
	}
	if rows <= 2 {
		t.Fatalf("%s, %q: no table rows", path, heading)
	}
	return out
}
