package capture

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPcapFileModes: with Plaintext the pcap files, which then hold the
// decrypted side of bumped connections, are created 0600 as the TLS key
// log is, and a file of an earlier run is made 0600 too; without it they
// stay 0640, for the appliance's group (an IDS, an auditor) to read.
func TestPcapFileModes(t *testing.T) {
	old := unix.Umask(0o022) // the usual umask, whatever the test runs under
	defer unix.Umask(old)
	for _, tc := range []struct {
		plaintext bool
		want      os.FileMode
	}{{false, 0o640}, {true, 0o600}} {
		dir := t.TempDir()
		earlier := filepath.Join(dir, filePrefix+"19990101T000000.000000Z-000001"+fileSuffix)
		if err := os.WriteFile(earlier, nil, 0o640); err != nil {
			t.Fatal(err)
		}
		c, err := New(Config{PcapDir: dir, Plaintext: tc.plaintext})
		if err != nil {
			t.Fatal(err)
		}
		pkt := tcpPacket(t, client, dest, []byte("GET / HTTP/1.1\r\n\r\n"))
		c.Packet(epA, 1, false, 1, parsed(t, pkt), pkt)
		if s := c.OpenPlaintext(plainFlow); s != nil {
			s.FromClient([]byte("GET /secret HTTP/1.1\r\nCookie: session=1\r\n\r\n"))
			s.Close()
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		files := pcapFiles(t, dir)
		if len(files) != 2 {
			t.Fatalf("plaintext %v: files %v, want the earlier one and a new one", tc.plaintext, files)
		}
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.want {
				t.Errorf("plaintext %v: %s has mode %#o, want %#o", tc.plaintext, filepath.Base(f), fi.Mode().Perm(), tc.want)
			}
		}
	}
}
