package cli

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vdisk/internal/storage/objstore/s3/s3test"
)

// needS3 starts (once) a real S3 server and points the AWS environment of
// this test at it.
func needS3(t *testing.T) *s3test.Server {
	t.Helper()
	srv := s3test.Need(t)
	cfg := srv.Config()
	t.Setenv("AWS_ACCESS_KEY_ID", cfg.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cfg.SecretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	return srv
}

// TestS3ServeAndConvert creates an image in a real S3 server by serving it,
// writes it with qemu-io over NBD, downloads it with convert, uploads a
// local image with convert and serves that back to qemu-img compare.
func TestS3ServeAndConvert(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	srv := needS3(t)
	dir := t.TempDir()
	url := fmt.Sprintf("s3://%s/cli-%d/a", srv.Bucket, time.Now().UnixNano())

	uri, stop := serving(t, "--s3-endpoint", srv.Endpoint, "--create", "--size", "16M", url)
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x7c 5M 300k", "-c", "flush", uri)
	if code, errs := stop(); code != 0 {
		t.Fatalf("serve exited %d: %s", code, errs)
	}

	down := filepath.Join(dir, "down.raw")
	if code, _, errs := run(t, "convert", "--s3-endpoint", srv.Endpoint, url, down); code != 0 {
		t.Fatalf("convert from s3: %s", errs)
	}
	got, err := os.ReadFile(down)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 16<<20)
	copy(want[5<<20:], bytes.Repeat([]byte{0x7c}, 300<<10))
	if !bytes.Equal(got, want) {
		t.Fatal("image downloaded from s3 differs from what qemu-io wrote")
	}

	local := filepath.Join(dir, "up.raw")
	data := make([]byte, 8<<20)
	rand.Read(data[2<<20 : 3<<20])
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	url2 := url + "-up"
	if code, _, errs := run(t, "convert", "--s3-endpoint", srv.Endpoint, local, url2); code != 0 {
		t.Fatalf("convert to s3: %s", errs)
	}
	if code, _, errs := run(t, "convert", "--s3-endpoint", srv.Endpoint, local, url2); code == 0 || !strings.Contains(errs, "exists") {
		t.Fatalf("convert onto an existing s3 image: code %d, %s", code, errs)
	}
	uri2, _ := serving(t, "--s3-endpoint", srv.Endpoint, "--read-only", url2)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", local, uri2)
}

func TestS3BadInput(t *testing.T) {
	srv := needS3(t)
	url := fmt.Sprintf("s3://%s/cli-bad-%d", srv.Bucket, time.Now().UnixNano())
	src := filepath.Join(t.TempDir(), "src.img")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing image", []string{"serve", "--s3-endpoint", srv.Endpoint, "--unix", t.TempDir() + "/s", url}, "no image"},
		{"vmdk with extent files over s3", []string{"convert", "--s3-endpoint", srv.Endpoint, "-O", "vmdk", "-o", "subformat=monolithicFlat", src, url}, "cannot name other files"},
		{"backing file over s3", []string{"create", "--s3-endpoint", srv.Endpoint, "-f", "qcow2", "-b", src, "-F", "raw", url}, "backing file"},
		{"no bucket", []string{"serve", "--s3-endpoint", srv.Endpoint, "s3://"}, "s3://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := run(t, tc.args...)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("code %d, stderr %q; want %q", code, errs, tc.want)
			}
		})
	}
}

// TestS3ServeFio runs fio's nbd engine with verify=crc32c through vdisk
// serve of s3:// images, raw and qcow2, with more data than the write-back
// cache holds; every block fio wrote reads back as written, also after the
// server is restarted on the image (a fresh cache).
func TestS3ServeFio(t *testing.T) {
	needTools(t, "fio")
	srv := needS3(t)
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			url := fmt.Sprintf("s3://%s/cli-fio-%d/%s", srv.Bucket, time.Now().UnixNano(), format)
			if code, _, errs := run(t, "create", "--s3-endpoint", srv.Endpoint, "-f", format, "--s3-chunk-size", "1M", "--size", "160M", url); code != 0 {
				t.Fatalf("create: %s", errs)
			}
			fio := func(uri string, args ...string) {
				t.Helper()
				base := []string{"--name=s3", "--ioengine=nbd", "--uri=" + uri, "--size=96M", "--offset=32M",
					"--bs=4k-256k", "--bsrange=4k-256k", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1",
					"--verify_state_save=0", "--randrepeat=1", "--randseed=42", "--output-format=terse"}
				runTool(t, "fio", append(base, args...)...)
			}
			uri, stop := serving(t, "--s3-endpoint", srv.Endpoint, url)
			fio(uri, "--rw=randwrite", "--do_verify=1")
			if code, errs := stop(); code != 0 {
				t.Fatalf("serve exited %d: %s", code, errs)
			}
			uri, stop = serving(t, "--s3-endpoint", srv.Endpoint, "--read-only", url)
			fio(uri, "--rw=randwrite", "--verify_only=1", "--do_verify=1") // replays the verification only
			if code, errs := stop(); code != 0 {
				t.Fatalf("read-only serve exited %d: %s", code, errs)
			}
		})
	}
}

// TestS3Rm: vdisk rm deletes an image that is not open, and refuses one
// being served, naming the writer.
func TestS3Rm(t *testing.T) {
	srv := needS3(t)
	url := fmt.Sprintf("s3://%s/cli-rm-%d", srv.Bucket, time.Now().UnixNano())
	if code, _, errs := run(t, "create", "--s3-endpoint", srv.Endpoint, "--size", "8M", url); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	_, stop := serving(t, "--s3-endpoint", srv.Endpoint, url)
	if code, _, errs := run(t, "rm", "--s3-endpoint", srv.Endpoint, url); code == 0 || !strings.Contains(errs, "in use by") {
		t.Fatalf("rm of a served image: code %d, %q; want refused naming the writer", code, errs)
	}
	if code, errs := stop(); code != 0 {
		t.Fatalf("serve: %s", errs)
	}
	if code, out, errs := run(t, "rm", "--s3-endpoint", srv.Endpoint, url); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("rm: code %d, %q, %q", code, out, errs)
	}
	if code, _, errs := run(t, "rm", "--s3-endpoint", srv.Endpoint, url); code == 0 || !strings.Contains(errs, "no image") {
		t.Fatalf("rm of a deleted image: code %d, %q", code, errs)
	}
	if code, _, errs := run(t, "rm", "/tmp/x.img"); code == 0 || !strings.Contains(errs, "rm(1)") {
		t.Fatalf("rm of a file: code %d, %q", code, errs)
	}
}

// TestS3Profile: --s3-profile takes the credentials and region from a
// profile of the shared AWS files, with none in the environment; a
// profile with wrong keys is refused by the store.
func TestS3Profile(t *testing.T) {
	srv := needS3(t)
	cfg := srv.Config()
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_REGION", "")
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	conf := fmt.Sprintf("[vdisk]\naws_access_key_id = %s\naws_secret_access_key = %s\n[wrong]\naws_access_key_id = %s\naws_secret_access_key = not-the-secret\n",
		cfg.AccessKey, cfg.SecretKey, cfg.AccessKey)
	if err := os.WriteFile(creds, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte("[profile vdisk]\nregion = us-east-1\n[profile wrong]\nregion = us-east-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	url := fmt.Sprintf("s3://%s/cli-profile-%d", srv.Bucket, time.Now().UnixNano())
	if code, _, errs := run(t, "create", "--s3-endpoint", srv.Endpoint, "--s3-profile", "vdisk", "--size", "4M", url); code != 0 {
		t.Fatalf("create with --s3-profile: %s", errs)
	}
	if code, _, errs := run(t, "rm", "--s3-endpoint", srv.Endpoint, "--s3-profile", "wrong", url); code == 0 {
		t.Fatalf("rm with a wrong secret succeeded: %s", errs)
	}
	if code, _, errs := run(t, "rm", "--s3-endpoint", srv.Endpoint, "--s3-profile", "vdisk", url); code != 0 {
		t.Fatalf("rm with --s3-profile: %s", errs)
	}
}
