package loop

import "testing"

func TestOnMountAndUnescape(t *testing.T) {
	mounts := []string{"/run/vdisk/mnt/abc", "/"}
	for _, tc := range []struct {
		path   string
		mounts []string
		want   bool
	}{
		{"/run/vdisk/mnt/abc/disk", mounts[:1], true},
		{"/run/vdisk/mnt/abc", mounts[:1], true},
		{"/run/vdisk/mnt/abcd/disk", mounts[:1], false},
		{"/var/tmp/x.img", mounts[:1], false},
		{"/anything", mounts[1:], true},
	} {
		if got := onMount(tc.path, tc.mounts); got != tc.want {
			t.Errorf("onMount(%q, %q) = %v", tc.path, tc.mounts, got)
		}
	}
	if got := unescapeMount(`/mnt/a\040b\134c`); got != `/mnt/a b\c` {
		t.Errorf("unescapeMount: %q", got)
	}
	if got := unescapeMount(`/mnt/plain`); got != "/mnt/plain" {
		t.Errorf("unescapeMount: %q", got)
	}
}
