// Package archtest keeps the import graph the shape STYLE.md draws:
// exports reach devices only through blockdev, blockdev stands on the
// standard library and x/sys alone, formats know nothing of exports or the
// control plane, and the control plane's types and client know nothing of
// the daemon.
package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Deps       []string
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
			pre = mod + pre
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
			name: "blockdev imports only the standard library and x/sys",
			from: under("blockdev"),
			deny: func(p string) bool { return !isStd(p) },
			allow: func(p string) bool {
				return strings.HasPrefix(p, "golang.org/x/sys/") || under("blockdev")(p)
			},
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
