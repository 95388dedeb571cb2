package nbd

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestNbdinfoTLS(t *testing.T) {
	need(t, "nbdinfo")
	sock, ca, _ := tlsServer(t)
	u := "nbds+unix:///disk?socket=" + sock + "&tls-certificates=" + ca.dir
	out := run(t, "nbdinfo", "--json", u)
	var info struct {
		TLS     bool `json:"TLS"`
		Exports []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json over TLS: %v\n%s", err, out)
	}
	if !info.TLS || info.Exports[0]["export-size"] != float64(1<<20) {
		t.Fatalf("nbdinfo over TLS: %s", out)
	}
	// A client that does not use TLS is refused.
	out, err := runErr("nbdinfo", uri(sock, "disk"))
	if err == nil || !strings.Contains(strings.ToLower(out), "tls") {
		t.Fatalf("plain client against a TLS server: %v\n%s", err, out)
	}
}
