// Package archtest keeps the import graph the shape STYLE.md draws:
// exports reach devices only through blockdev, blockdev stands on the
// standard library and x/sys alone, formats know nothing of exports or the
// control plane, and the control plane's types and client know nothing of
// the daemon.
package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Dir        string
	Deps       []string
	Imports    []string // direct, not tests'
	GoFiles    []string
}

// rule forbids packages matching from to depend on packages matching any
// of deny, unless they match allow.
type rule struct {
	name  string
	from  func(string) bool
	deny  func(string) bool
	allow func(string) bool
}

const mod = "vdisk/"

func under(prefixes ...string) func(string) bool {
	return func(p string) bool {
		for _, pre := range prefixes {
			pre = mod + "internal/" + pre
			if p == pre || strings.HasPrefix(p, pre+"/") {
				return true
			}
		}
		return false
	}
}

func isStd(p string) bool {
	return !strings.Contains(strings.Split(p, "/")[0], ".") && !strings.HasPrefix(p, mod)
}

func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json", "vdisk/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 3 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	exports := under("nbd", "fuseexport", "loop", "ublk")
	rules := []rule{
		{
			name: "blockdev imports only the standard library, x/sys and uring",
			from: under("blockdev"),
			deny: func(p string) bool { return !isStd(p) },
			allow: func(p string) bool {
				return strings.HasPrefix(p, "golang.org/x/sys/") || under("blockdev", "uring")(p)
			},
		},
		{
			name:  "uring imports only the standard library and x/sys",
			from:  under("uring"),
			deny:  func(p string) bool { return !isStd(p) },
			allow: func(p string) bool { return strings.HasPrefix(p, "golang.org/x/sys/") },
		},
		{
			name: "exports import no formats, layers, storage or control plane",
			from: exports,
			deny: under("image", "crypt", "overlay", "storage", "daemon", "api", "client", "cli"),
		},
		{
			name: "formats import no exports, crypt or control plane",
			from: under("image"),
			deny: under("nbd", "fuseexport", "loop", "ublk", "crypt", "daemon", "api", "client", "cli"),
		},
		{
			name: "crypt imports no exports, formats or control plane",
			from: under("crypt"),
			deny: under("nbd", "fuseexport", "loop", "ublk", "image", "daemon", "api", "client", "cli"),
		},
		{
			name: "api and client import nothing of the daemon or the layers",
			from: under("api", "client"),
			deny: func(p string) bool { return strings.HasPrefix(p, mod) && !under("api", "client")(p) },
		},
	}
	// Direct imports: only the stack composes layers, so only it (and the
	// layers' own trees) imports the object store and LUKS.
	direct := []rule{
		{
			name: "only internal/stack composes layers: nothing else imports storage or crypt/luks",
			from: func(p string) bool { return strings.HasPrefix(p, mod) && !under("stack", "storage", "crypt")(p) },
			deny: under("storage", "crypt/luks"),
		},
	}
	for _, p := range pkgs {
		for _, r := range direct {
			if !r.from(p.ImportPath) {
				continue
			}
			for _, d := range p.Imports {
				if r.deny(d) {
					t.Errorf("%s imports %s: %s", p.ImportPath, d, r.name)
				}
			}
		}
	}
	for _, p := range pkgs {
		for _, r := range rules {
			if !r.from(p.ImportPath) {
				continue
			}
			for _, d := range p.Deps {
				if r.deny(d) && (r.allow == nil || !r.allow(d)) {
					t.Errorf("%s imports %s: %s", p.ImportPath, d, r.name)
				}
			}
		}
	}
}

// TestCLIDiskCommandsUseTheAPI: open, close and list reach disks through
// the daemon's API only, never the layers.
func TestCLIDiskCommandsUseTheAPI(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", mod+"internal/cli").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	allowed := map[string]bool{mod + "internal/api": true, mod + "internal/client": true}
	for _, name := range []string{"open.go", "close.go", "list.go"} {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, name), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if strings.HasPrefix(p, mod) && !allowed[p] {
				t.Errorf("internal/cli/%s imports %s: open, close and list talk to the daemon's API only", name, p)
			}
		}
	}
}

// TestFormatsOpenNoPaths: formats reach files only through image.File and
// image.Names (the trust policy), never by opening or resolving a path.
func TestFormatsOpenNoPaths(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", mod+"internal/image/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	banned := map[string]bool{
		"os.Open": true, "os.OpenFile": true, "os.Create": true, "os.Stat": true, "os.Lstat": true,
		"os.ReadFile": true, "os.Readlink": true, "filepath.EvalSymlinks": true, "filepath.Abs": true,
		"syscall.Open": true, "unix.Open": true, "unix.Openat2": true, "blockdev.OpenFile": true,
	}
	for _, dir := range strings.Fields(string(out)) {
		base := filepath.Base(dir)
		if base == "image" || base == "imagetest" {
			continue // the registry, the policy itself, and test helpers
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); ok && banned[x.Name+"."+sel.Sel.Name] {
					t.Errorf("%s calls %s.%s: formats open files through image.Names only", name, x.Name, sel.Sel.Name)
				}
				return true
			})
		}
	}
}
