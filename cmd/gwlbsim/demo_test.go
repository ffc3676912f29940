package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// TestDemoBuildsTheServers: demo.sh (make demo) builds its destination
// servers as the test binary of a package (go test -c) and starts that
// binary with an environment variable that turns it into the servers. The
// package it builds must be the one whose test binary has that mode: an
// init reading the variable. 2d7ed77 moved the mode from cmd/gwlbproxy to
// internal/appliance while demo.sh went on building cmd/gwlbproxy's test
// binary, which ignored the variable, ran its own tests in the server
// namespace and never printed "ready": `make demo` always failed after its
// 10 s wait. This ties the script to the Go source, so that a move of
// either shows here rather than in a root-only demo nobody runs.
func TestDemoBuildsTheServers(t *testing.T) {
	script, err := os.ReadFile("demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	builds := regexp.MustCompile(`go test -c -o "\$WORK/servers\.test" (\S+?)\)?\n`).FindAllSubmatch(script, -1)
	if len(builds) != 1 {
		t.Fatalf("demo.sh: %d `go test -c -o \"$WORK/servers.test\" PKG` lines, want 1", len(builds))
	}
	pkg := string(builds[0][1])
	starts := regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)=\S+ ip netns exec \S+ "\$WORK/servers\.test"`).FindAllSubmatch(script, -1)
	if len(starts) != 1 {
		t.Fatalf("demo.sh: %d lines starting \"$WORK/servers.test\" with VAR=... ip netns exec, want 1", len(starts))
	}
	env := string(starts[0][1])

	// The module root is two levels up from cmd/gwlbsim, where demo.sh
	// runs its go commands.
	dir := filepath.Join("..", "..", filepath.FromSlash(pkg))
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("demo.sh builds the test binary of %s, which has no test files (%v)", pkg, err)
	}
	if !serverModeIn(t, files, env) {
		t.Fatalf("demo.sh builds the servers from %s, whose test files have no init reading %s: "+
			"the binary would run that package's tests instead of the servers; build the package "+
			"that holds the server mode (grep -rl %s --include='*_test.go')", pkg, env, env)
	}
}

// serverModeIn reports whether one of files has an init calling
// os.Getenv with env, as a literal or through a constant of that value
// declared in files.
func serverModeIn(t *testing.T, files []string, env string) bool {
	t.Helper()
	fset := token.NewFileSet()
	var parsed []*ast.File
	names := map[string]bool{} // the constants whose value is env
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, af)
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, v := range vs.Values {
					if isStringLit(v, env) && i < len(vs.Names) {
						names[vs.Names[i].Name] = true
					}
				}
			}
		}
	}
	for _, af := range parsed {
		for _, d := range af.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || fd.Name.Name != "init" || fd.Body == nil {
				continue
			}
			found := false
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) != 1 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Getenv" {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "os" {
					return true
				}
				if id, ok := call.Args[0].(*ast.Ident); ok && names[id.Name] || isStringLit(call.Args[0], env) {
					found = true
				}
				return !found
			})
			if found {
				return true
			}
		}
	}
	return false
}

func isStringLit(e ast.Expr, s string) bool {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return false
	}
	v, err := strconv.Unquote(lit.Value)
	return err == nil && v == s
}
