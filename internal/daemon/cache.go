package daemon

import (
	"vdisk/internal/api"
	"vdisk/internal/blockdev"
)

// cacheModes parses an open request's cache and I/O modes ("" is the
// default of each).
func cacheModes(cache, aio string) (blockdev.CacheMode, blockdev.AIOMode, error) {
	m, err := blockdev.ParseCacheMode(cache)
	if err != nil {
		return 0, 0, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	a, err := blockdev.ParseAIOMode(aio)
	if err != nil {
		return 0, 0, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	return m, a, nil
}

// checkCacheModes refuses unknown modes, and modes for an s3:// image,
// whose bytes are not a local file.
func checkCacheModes(req api.OpenRequest, url bool) error {
	if _, _, err := cacheModes(req.CacheMode, req.AIO); err != nil {
		return err
	}
	if url && (req.CacheMode != "" || req.AIO != "") {
		return api.Errorf(api.CodeBadRequest, "%s is an s3:// image: --cache and --aio apply to local image files", req.File)
	}
	return nil
}
