package nbd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	sock, path, _ := fileServer(t, 8<<20)
	cmds := []string{
		"write -P 0xab 0 1M",
		"write -f -P 0xcd 1M 64k", // FUA
		"aio_write -P 0x11 2M 4k",
		"aio_write -P 0x22 3M 512",
		"aio_flush",
		"flush",
		"write -z 4M 128k",
		"discard 5M 1M",
		"read -P 0xab 0 1M",
		"read -P 0xcd 1M 64k",
		"read -P 0x11 2M 4k",
		"read -P 0x22 3M 512",
		"read -P 0 4M 128k",
		"read -P 0 5M 1M",
		"read -v 1048575 2",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, uri(sock, "disk"))...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if n := len(regexp.MustCompile(`(?m)^read \d+/\d+ bytes`).FindAllString(out, -1)); n != 7 {
		t.Fatalf("qemu-io: %d reads completed, want 7:\n%s", n, out)
	}
	if !strings.Contains(out, "000fffff:  ab cd") {
		t.Fatalf("qemu-io: byte dump across the write boundary is wrong:\n%s", out)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[:1<<20], bytes.Repeat([]byte{0xab}, 1<<20)) || img[3<<20] != 0x22 {
		t.Fatal("image content differs from what qemu-io wrote")
	}
	// Writes to a read-only export fail.
	out = run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0 0 4k", uri(sock, "ro"))
	if !strings.Contains(out, "read 4096/4096") {
		t.Fatalf("qemu-io on read-only export:\n%s", out)
	}
}

func TestQemuImgConvertCompare(t *testing.T) {
	need(t, "qemu-img")
	const size = 8 << 20
	sock, _, _ := fileServer(t, size)
	src, data := writeRandomFile(t, size)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri(sock, "disk"))
	out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri(sock, "disk"))
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "back.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri(sock, "disk"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("qemu-img convert back differs")
	}
	// A change is noticed.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 512", uri(sock, "disk"))
	out, err = runErr("qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri(sock, "disk"))
	if err == nil || !strings.Contains(out, "Content mismatch at offset 4096") {
		t.Fatalf("qemu-img compare after a change: %v\n%s", err, out)
	}
}

func TestFio(t *testing.T) {
	need(t, "fio")
	sock, _, _ := fileServer(t, 64<<20)
	jobs := []struct {
		name string
		args []string
	}{
		{"randwrite-4k-qd32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}},
		{"seqwrite-1m", []string{"--rw=write", "--bs=1M", "--iodepth=8"}},
		{"randrw-64k", []string{"--rw=randrw", "--bs=64k", "--iodepth=16"}},
	}
	for _, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			args := append([]string{
				"--name=" + j.name, "--ioengine=nbd", "--uri=" + uri(sock, "disk"),
				"--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
				"--output-format=json", "--verify_state_save=0",
			}, j.args...)
			out := run(t, "fio", args...)
			var res struct {
				Jobs []struct {
					Error int
					Read  struct {
						IOBytes int64 `json:"io_bytes"`
					}
					Write struct {
						IOBytes int64 `json:"io_bytes"`
					}
				}
			}
			if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil || len(res.Jobs) != 1 {
				t.Fatalf("fio output: %v\n%s", err, out)
			}
			// Every byte written is read back and verified.
			if jb := res.Jobs[0]; jb.Error != 0 || jb.Write.IOBytes == 0 || jb.Read.IOBytes < jb.Write.IOBytes {
				t.Fatalf("fio: %+v\n%s", jb, out)
			}
		})
	}
}
