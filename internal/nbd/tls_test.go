package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"vdisk/internal/blockdev"
	"vdisk/internal/nbd/wire"
)

// testCA is a self-signed CA with a server certificate for "localhost",
// written as the files libnbd's tls-certificates directory expects
// (ca-cert.pem, server-cert.pem, server-key.pem).
type testCA struct {
	dir    string
	pool   *x509.CertPool
	server tls.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vdisk test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, typ string, der []byte) []byte {
		b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return b
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	certPEM := write("server-cert.pem", "CERTIFICATE", srvDER)
	keyPEM := write("server-key.pem", "PRIVATE KEY", keyDER)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &testCA{dir: dir, pool: pool, server: cert}
}

func tlsServer(t *testing.T) (string, *testCA, *blockdev.Mem) {
	ca := newTestCA(t)
	m := blockdev.NewMem(1 << 20)
	sock := startServer(t, &Server{
		Exports:   []Export{{Name: "disk", Device: m}},
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.server}},
	})
	return sock, ca, m
}

func TestTLSRequired(t *testing.T) {
	sock, _, _ := tlsServer(t)
	c := dial(t, sock)
	c.greet(wire.ClientFixedNewstyle)
	for _, o := range []wire.Opt{wire.OptList, wire.OptInfo, wire.OptGo, wire.OptStructuredReply, wire.OptSetMetaContext, 99} {
		c.expectRep(o, nil, wire.RepErrTLSReqd)
	}
	c.expectRep(wire.OptAbort, nil, wire.RepAck)
	c.expectClosed()

	// EXPORT_NAME cannot be refused: the session ends.
	c = dial(t, sock)
	c.greet(wire.ClientFixedNewstyle)
	c.opt(wire.OptExportName, []byte("disk"))
	c.expectClosed()

	// Without fixed newstyle TLS cannot be negotiated at all.
	c = dial(t, sock)
	c.greet(0)
	c.expectClosed()
}

func TestStartTLS(t *testing.T) {
	sock, ca, m := tlsServer(t)
	c := dial(t, sock)
	c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	c.expectRep(wire.OptStartTLS, nil, wire.RepAck)

	// TLS 1.2 is refused: the server requires 1.3.
	old := tls.Client(c.nc, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12})
	if err := old.Handshake(); err == nil {
		t.Fatal("TLS 1.2 handshake succeeded")
	}

	c = dial(t, sock)
	c.greet(wire.ClientFixedNewstyle | wire.ClientNoZeroes)
	c.expectRep(wire.OptStartTLS, nil, wire.RepAck)
	tc := tls.Client(c.nc, &tls.Config{RootCAs: ca.pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("TLS version %#x", v)
	}
	c.nc = tc
	c.br.Reset(tc)
	c.expectRep(wire.OptStartTLS, nil, wire.RepErrInvalid)
	reps := c.optAll(wire.OptList, nil)
	if len(reps) != 2 {
		t.Fatalf("list over TLS: %+v", reps)
	}
	c.expectRep(wire.OptStructuredReply, nil, wire.RepAck)
	c.goExport("disk")
	data := randBytes(64 << 10)
	if r := c.do(wire.Request{Type: wire.CmdWrite, Offset: 4096, Length: uint64(len(data))}, data); r.errno != 0 {
		t.Fatalf("write over TLS: %d", r.errno)
	}
	r := c.do(wire.Request{Type: wire.CmdRead, Offset: 4096, Length: uint64(len(data))}, nil)
	if r.errno != 0 || string(r.data) != string(data) {
		t.Fatalf("read over TLS: errno %d", r.errno)
	}
	got := make([]byte, len(data))
	m.ReadAt(got, 4096)
	if string(got) != string(data) {
		t.Fatal("device content differs")
	}
	c.send(wire.Request{Type: wire.CmdDisc}, nil)
	c.expectClosed()
}
