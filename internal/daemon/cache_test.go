package daemon

import (
	"errors"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
)

func TestCheckCacheModes(t *testing.T) {
	for _, tc := range []struct {
		req api.OpenRequest
		url bool
		ok  bool
	}{
		{api.OpenRequest{File: "/a.img"}, false, true},
		{api.OpenRequest{File: "/a.img", CacheMode: "none", AIO: "io_uring"}, false, true},
		{api.OpenRequest{File: "/a.img", CacheMode: "writethrough"}, false, false},
		{api.OpenRequest{File: "/a.img", AIO: "native"}, false, false},
		{api.OpenRequest{File: "s3://b/p"}, true, true},
		{api.OpenRequest{File: "s3://b/p", CacheMode: "none"}, true, false},
	} {
		err := checkCacheModes(tc.req, tc.url)
		var ae *api.Error
		if tc.ok != (err == nil) || err != nil && (!errors.As(err, &ae) || ae.Code != api.CodeBadRequest) {
			t.Errorf("%+v: %v", tc.req, err)
		}
	}
	m, a, err := cacheModes("directsync", "io_uring")
	if err != nil || m != blockdev.CacheDirectSync || a != blockdev.AIOIOUring {
		t.Errorf("cacheModes = %v, %v, %v", m, a, err)
	}
}
