package nbd

import (
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// BenchmarkRead4k measures pipelined 4 KiB reads over a unix socket with
// structured replies, 32 in flight, run inline by the reader and on worker
// goroutines.
func BenchmarkRead4k(b *testing.B) {
	b.Run("inline", func(b *testing.B) { benchRead4k(b, false) })
	b.Run("goroutines", func(b *testing.B) { benchRead4k(b, true) })
}

func benchRead4k(b *testing.B, noInline bool) {
	const qd = 32
	m := blockdev.NewMem(64 << 20)
	m.WriteAt(randBytes(64<<20), 0)
	sock := startServer(b, &Server{Exports: []Export{{Name: "disk", Device: m}}, noInline: noInline})
	c := dial(b, sock)
	c.open("disk", true)
	var reqs [qd][wire.RequestSize]byte
	for i := range reqs {
		wire.PutRequest(&reqs[i], wire.Request{Type: wire.CmdRead, Cookie: uint64(i + 1), Offset: uint64(i) * 4096 * 7, Length: 4096})
	}
	payload := make([]byte, wire.ChunkHeaderSize+8+4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += qd {
		for i := range reqs {
			c.nc.Write(reqs[i][:])
		}
		for range reqs {
			if _, err := ioReadFull(c.br, payload); err != nil {
				b.Fatal(err)
			}
		}
	}
}
