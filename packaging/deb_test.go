package packaging

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"vdisk/internal/image/imagetest"
)

// TestDebPackage builds the package with scripts/package.sh, installs it
// with dpkg -i, runs the installed vdisk --version and man -w vdisk, checks
// the installed units with systemd-analyze verify, and removes it with
// dpkg -r: every file and directory it brought is gone afterwards. It
// changes the host (/usr), so it refuses to run where vdisk is installed
// already.
func TestDebPackage(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"dpkg", "dpkg-deb", "man", "systemd-analyze", "git"} {
		imagetest.NeedTool(t, tool)
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "vdisk").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("a vdisk package is installed on this host already (%s): remove it first (dpkg -r vdisk)", out)
	}
	dist := t.TempDir()
	cmd := exec.Command("../scripts/package.sh")
	cmd.Env = append(os.Environ(), "DIST="+dist, "VERSION=9.8.7~test")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("package.sh: %v\n%s", err, stderr.String())
	}
	deb := strings.TrimSpace(string(out))
	if deb != filepath.Join(dist, "vdisk_9.8.7~test_amd64.deb") {
		t.Fatalf("package.sh wrote %q", deb)
	}

	// What the package holds, and which of its directories exist now.
	contents, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	var files, newDirs []string
	sc := bufio.NewScanner(bytes.NewReader(contents))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		p := strings.TrimPrefix(f[len(f)-1], ".")
		if strings.HasPrefix(f[0], "d") {
			if _, err := os.Lstat(p); err != nil {
				newDirs = append(newDirs, p)
			}
			continue
		}
		files = append(files, p)
	}
	for _, want := range []string{"/usr/bin/vdisk", "/usr/lib/systemd/system/vdisk.service", "/usr/lib/systemd/system/vdisk.socket",
		"/usr/lib/systemd/system/vdisk-serve@.service", "/usr/share/man/man1/vdisk.1.gz", "/usr/share/man/man1/vdisk-open.1.gz",
		"/usr/share/bash-completion/completions/vdisk", "/usr/share/zsh/vendor-completions/_vdisk",
		"/usr/share/fish/vendor_completions.d/vdisk.fish", "/usr/share/doc/vdisk/README.md"} {
		if !contains(files, want) {
			t.Errorf("the package has no %s", want)
		}
	}
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			t.Fatalf("%s exists before the package is installed: refusing to overwrite it", f)
		}
	}

	removed := false
	t.Cleanup(func() {
		if !removed {
			exec.Command("dpkg", "-r", "vdisk").Run()
		}
	})
	imagetest.Run(t, "dpkg", "-i", deb)
	ver := imagetest.Run(t, "/usr/bin/vdisk", "--version")
	if !regexp.MustCompile(`^vdisk 9\.8\.7~test \(commit [0-9a-f]{12}(\+dirty)?, go[0-9.]+\)\n$`).MatchString(ver) {
		t.Errorf("vdisk --version: %q, want the version and the commit", ver)
	}
	if page := strings.TrimSpace(imagetest.Run(t, "man", "-w", "vdisk")); page != "/usr/share/man/man1/vdisk.1.gz" {
		t.Errorf("man -w vdisk: %q", page)
	}
	if page := strings.TrimSpace(imagetest.Run(t, "man", "-w", "vdisk-serve")); page != "/usr/share/man/man1/vdisk-serve.1.gz" {
		t.Errorf("man -w vdisk-serve: %q", page)
	}
	units, _ := filepath.Glob("/usr/lib/systemd/system/vdisk*")
	if out, err := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify of the installed units: %v\n%s", err, out)
	}

	imagetest.Run(t, "dpkg", "-r", "vdisk")
	removed = true
	for _, f := range append(files, newDirs...) {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s is left behind after dpkg -r", f)
		}
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "vdisk").Output(); strings.Contains(string(out), "installed") || strings.Contains(string(out), "config-files") {
		t.Errorf("dpkg still lists vdisk after dpkg -r: %q", out)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
