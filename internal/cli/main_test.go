package cli

import (
	"os"
	"testing"

	"vdisk/internal/storage/objstore/s3/s3test"
)

// TestMain stops the S3 server the s3:// tests start, if any.
func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }
