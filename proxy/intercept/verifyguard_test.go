package intercept_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// hostileChain is what an origin the client controls can present for
// name: a leaf, then n P-521 CA certificates. With sameName, all of them
// are named "I", the leaf's issuer, and none signed it: x509 tries each
// (the attack). Without, each is named apart and signs the one before,
// the last naming issuer as its own but signed by nobody it trusts: the
// longest single path x509 can be made to walk.
func hostileChain(t *testing.T, name string, n int, sameName bool, issuer *x509.Certificate) *tls.Certificate {
	t.Helper()
	now := time.Now()
	p521 := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	create := func(tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	caTmpl := func(i int, cn string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(int64(10 + i)), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	leafKey := p521()
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(5), DNSNames: []string{name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	var ders [][]byte
	if sameName {
		leaf := create(leafTmpl, caTmpl(0, "I"), &leafKey.PublicKey, p521())
		ders = append(ders, leaf.Raw)
		for i := range n {
			k := p521()
			tmpl := caTmpl(i, "I")
			ders = append(ders, create(tmpl, tmpl, &k.PublicKey, k).Raw)
		}
		return &tls.Certificate{Certificate: ders, PrivateKey: leafKey}
	}
	// From the top down: the top names issuer, and a key it does not have
	// signed it.
	parent, parentKey := &x509.Certificate{RawSubject: issuer.RawSubject}, p521()
	var cas [][]byte
	for i := range n {
		k := p521()
		c := create(caTmpl(i, fmt.Sprintf("I%d", i)), parent, &k.PublicKey, parentKey)
		cas = append([][]byte{c.Raw}, cas...)
		parent, parentKey = c, k
	}
	leaf := create(leafTmpl, parent, &leafKey.PublicKey, parentKey)
	return &tls.Certificate{Certificate: append([][]byte{leaf.Raw}, cas...), PrivateKey: leafKey}
}

// paddedLeaf is a self-signed leaf for name of about size bytes: names
// and more names. Go's crypto/tls takes certificate messages of up to
// 256 KiB; whatever of a chain is kept keeps its message.
func paddedLeaf(t *testing.T, name string, size int) *tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{name}
	for i := 0; len(names)*20 < size; i++ {
		names = append(names, fmt.Sprintf("n%06d.example.test", i))
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "padded"}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// TestHostileChainCheap: an origin's chain built to make x509 try
// signature after signature is refused before x509 sees it, or verified
// once along a single path and then remembered; the record says why.
// Loopback TCP for the upstream: the interceptor's alert must not wait.
func TestHostileChainCheap(t *testing.T) {
	const name = "www.example.test"
	r := newRig(t, testPolicy)
	connect := func(cert *tls.Certificate) (time.Duration, string) {
		t.Helper()
		upEnd, _ := r.startUpstreamTCP(cert, "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
		client.SetDeadline(time.Now().Add(waitLimit))
		start := time.Now()
		err := client.Handshake()
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("client handshake: %v, want a bad certificate alert", err)
		}
		client.Close()
		sv.waitDoneOnce(t)
		recs := r.records()
		rec := recs[len(recs)-1]
		if rec.Action != "deny" || rec.Result != "denied" || rec.UpstreamVerify != "failed" {
			t.Errorf("record %+v", rec)
		}
		return took, rec.Error
	}
	for _, tc := range []struct {
		what    string
		cert    *tls.Certificate
		wantErr string
	}{
		{"100 intermediates named as the leaf's issuer", hostileChain(t, name, 100, true, nil),
			"upstream certificate: chain of 101 certificates, more than 10: not verified"},
		{"9 intermediates named as the leaf's issuer", hostileChain(t, name, 9, true, nil),
			`upstream certificate: 9 different intermediates named "CN=I": not verified`},
		{"a leaf of 80 KiB", paddedLeaf(t, name, 80<<10),
			"upstream certificate: chain of more than 65536 bytes: not verified"},
	} {
		before := intercept.Verifications(r.ic)
		took, recErr := connect(tc.cert)
		if recErr != tc.wantErr {
			t.Errorf("%s: record error %q, want %q", tc.what, recErr, tc.wantErr)
		}
		if n := intercept.Verifications(r.ic) - before; n != 0 {
			t.Errorf("%s: %d verifications, want none", tc.what, n)
		}
		t.Logf("%s: refused in %s", tc.what, took)
	}

	// The worst that gets through to x509: 9 P-521 CAs in a line, topped
	// by one naming the trusted root as its issuer. Verified once; the
	// same chain again is refused from memory.
	worst := hostileChain(t, name, 9, false, r.upCA.TrustAnchor())
	before := intercept.Verifications(r.ic)
	took, recErr := connect(worst)
	if !strings.HasPrefix(recErr, "upstream certificate: x509: certificate signed by unknown authority") {
		t.Errorf("longest path: record error %q", recErr)
	}
	if n := intercept.Verifications(r.ic) - before; n != 1 {
		t.Errorf("longest path: %d verifications, want 1", n)
	}
	t.Logf("longest path, verified: %s", took)
	took, again := connect(worst)
	if again != recErr {
		t.Errorf("longest path again: record error %q, want %q", again, recErr)
	}
	if n := intercept.Verifications(r.ic) - before; n != 1 {
		t.Errorf("longest path again: %d verifications in all, want 1: the failure was not remembered", n)
	}
	t.Logf("longest path, again: %s", took)
	start := time.Now()
	upEnd, _ := r.startUpstreamTCP(r.upLeaf(name), "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
	client.SetDeadline(time.Now().Add(waitLimit))
	if err := client.Handshake(); err != nil {
		t.Fatalf("an honest origin: %v", err)
	}
	t.Logf("an honest origin, for comparison: %s", time.Since(start))
	client.Close()
	sv.waitDoneOnce(t)
}

// TestWeakRSARefused: a chain x509 accepts with an RSA key under 2048 bits,
// the leaf's or the root's, is refused and the record says which; before,
// it was bumped behind the appliance's P-256 leaf, the client none the
// wiser. A 2048-bit chain is bumped.
func TestWeakRSARefused(t *testing.T) {
	const name = "www.example.test"
	now := time.Now()
	rsaKey := func(bits int) *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, rsa2048 := rsaKey(1024), rsaKey(2048)
	for _, tc := range []struct {
		what             string
		rootKey, leafKey crypto.Signer
		wantErr          string // "" when bumped
	}{
		{"RSA-1024 leaf and root", rsa1024, rsa1024, `upstream certificate: RSA key of 1024 bits in "CN=www.example.test", under 2048`},
		{"RSA-1024 root", rsa1024, ecKey, `upstream certificate: RSA key of 1024 bits in "CN=weak root", under 2048`},
		{"RSA-2048", rsa2048, rsa2048, ""},
	} {
		t.Run(tc.what, func(t *testing.T) {
			rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weak root"},
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
				KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
			rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, tc.rootKey.Public(), tc.rootKey)
			if err != nil {
				t.Fatal(err)
			}
			root, _ := x509.ParseCertificate(rootDER)
			leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, tc.leafKey.Public(), tc.rootKey)
			if err != nil {
				t.Fatal(err)
			}
			r := newRig(t, testPolicy, func(c *intercept.Config) { c.UpstreamRoots.AddCert(root) })
			upEnd, _ := r.startUpstreamTCP(&tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: tc.leafKey}, "http/1.1")
			c, sv := r.connect(upEnd, tlsDest)
			client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
			client.SetDeadline(time.Now().Add(waitLimit))
			err = client.Handshake()
			if (err == nil) != (tc.wantErr == "") {
				t.Fatalf("client handshake: %v", err)
			}
			client.Close()
			sv.waitDoneOnce(t)
			rec := r.records()[0]
			if tc.wantErr == "" && rec.UpstreamVerify != "ok" ||
				tc.wantErr != "" && (rec.UpstreamVerify != "failed" || rec.Action != "deny" || rec.Error != tc.wantErr) {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// TestVerifySlotsShared: instances behind one NAT are one client. With a
// neighbour's verification under way, an honest new chain is verified at
// once (before, with one slot, it waited behind the neighbour's). With
// every slot held until the wait runs out, the bump ends as an error, not
// as a certificate refused: nothing was verified (before: recorded as
// upstream_verify failed, and denied).
func TestVerifySlotsShared(t *testing.T) {
	const name = "www.example.test"
	r := newRig(t, testPolicy)
	// The client's own slots, not everyone's, are under test here.
	intercept.SetVerificationLimit(r.ic, 2*intercept.MaxClientVerifications)
	bump := func() error {
		t.Helper()
		upEnd, _ := r.startUpstreamTCP(r.upLeaf(name), "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
		client.SetDeadline(time.Now().Add(waitLimit))
		err := client.Handshake()
		client.Close()
		sv.waitDoneOnce(t)
		return err
	}
	neighbour := intercept.HoldVerifySlot(r.ic, testEndpoint, testClient)
	start := time.Now()
	if err := bump(); err != nil {
		t.Fatalf("an honest chain beside a neighbour's verification: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("an honest chain beside a neighbour's verification took %s", d)
	}
	if rec := r.records()[0]; rec.Action != "bump" || rec.UpstreamVerify != "ok" {
		t.Errorf("record %+v", rec)
	}

	var held []func()
	for range intercept.MaxClientVerifications - 1 {
		held = append(held, intercept.HoldVerifySlot(r.ic, testEndpoint, testClient))
	}
	// Another chain: the first one's verification is remembered.
	upEnd, _ := r.startUpstreamTCP(r.strangerLeaf(name), "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
	client.SetDeadline(time.Now().Add(waitLimit))
	if err := client.Handshake(); err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Errorf("client handshake with the slots held: %v, want a handshake failure alert", err)
	}
	client.Close()
	sv.waitDoneOnce(t)
	rec := r.records()[1]
	if rec.Action != "bump" || rec.Result != "error" || rec.UpstreamVerify != "" ||
		rec.Error != "upstream TLS handshake: the client's 2 verifications and leaf mints under way did not end in time: not verified" {
		t.Errorf("record %+v", rec)
	}
	neighbour()
	for _, release := range held {
		release()
	}
}

// pki issues the certificates of TestRootTwice's chains.
type pki struct {
	t    *testing.T
	now  time.Time
	next int64
}

// issue returns a certificate for key named cn, issued by parent (nil:
// self-signed) under parentKey; a CA unless dnsName is set.
func (p *pki) issue(cn, dnsName string, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	p.t.Helper()
	p.next++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.next), Subject: pkix.Name{CommonName: cn},
		NotBefore: p.now.Add(-time.Hour), NotAfter: p.now.Add(time.Hour)}
	if dnsName != "" {
		tmpl.DNSNames = []string{dnsName}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		p.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// TestRootTwice: a server may send its root both self-signed and
// cross-signed by an older root, for clients that trust only the older:
// two different certificates of one subject. Such a chain verifies
// (before, it was refused as the branching attack); two subjects sent
// twice each, or three certificates of one subject, are refused still.
func TestRootTwice(t *testing.T) {
	const name = "www.example.test"
	p := &pki{t: t, now: time.Now()}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	oldKey, rootKey, interKey, leafKey := key(), key(), key(), key()
	oldRoot := p.issue("Old Root", "", oldKey, nil, nil)
	rootSelf := p.issue("Root X", "", rootKey, nil, nil)
	rootCross := p.issue("Root X", "", rootKey, oldRoot, oldKey)
	inter := p.issue("Inter", "", interKey, rootSelf, rootKey)
	interAgain := p.issue("Inter", "", interKey, rootSelf, rootKey) // re-issued: another serial
	leaf := p.issue(name, name, leafKey, inter, interKey)
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.UpstreamRoots.AddCert(oldRoot) })
	for _, tc := range []struct {
		what    string
		chain   []*x509.Certificate
		wantErr string // "" when bumped
	}{
		{"root self-signed, then cross-signed", []*x509.Certificate{leaf, inter, rootSelf, rootCross}, ""},
		{"root cross-signed, then self-signed", []*x509.Certificate{leaf, inter, rootCross, rootSelf}, ""},
		{"the intermediate twice over, and the root twice", []*x509.Certificate{leaf, inter, inter, rootCross, rootSelf}, ""},
		{"intermediate and root presented twice each", []*x509.Certificate{leaf, inter, interAgain, rootCross, rootSelf},
			`upstream certificate: intermediates named "CN=Inter" and "CN=Root X" presented twice each: not verified`},
		{"the root three times", []*x509.Certificate{leaf, inter, rootCross, rootSelf, p.issue("Root X", "", rootKey, oldRoot, oldKey)},
			`upstream certificate: 3 different intermediates named "CN=Root X": not verified`},
	} {
		var ders [][]byte
		for _, c := range tc.chain {
			ders = append(ders, c.Raw)
		}
		upEnd, _ := r.startUpstreamTCP(&tls.Certificate{Certificate: ders, PrivateKey: leafKey}, "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
		client.SetDeadline(time.Now().Add(waitLimit))
		err := client.Handshake()
		if (err == nil) != (tc.wantErr == "") {
			t.Errorf("%s: client handshake: %v", tc.what, err)
		}
		client.Close()
		sv.waitDoneOnce(t)
		recs := r.records()
		rec := recs[len(recs)-1]
		if tc.wantErr == "" && (rec.Action != "bump" || rec.UpstreamVerify != "ok") ||
			tc.wantErr != "" && (rec.Action != "deny" || rec.UpstreamVerify != "failed" || rec.Error != tc.wantErr) {
			t.Errorf("%s: record %+v", tc.what, rec)
		}
	}
}

// TestSubjectTwiceCheap: the worst a subject presented twice can do. The
// pair sits right above the leaf, so everything above it is walked twice:
// 7 P-521 CAs in a line, topped by one naming the trusted root as its
// issuer. Verified once, failing; compare the time with
// TestHostileChainCheap's longest path.
func TestSubjectTwiceCheap(t *testing.T) {
	const name = "www.example.test"
	r := newRig(t, testPolicy)
	p := &pki{t: t, now: time.Now()}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	// From the top down, as hostileChain builds its line.
	parent, parentKey := &x509.Certificate{RawSubject: r.upCA.TrustAnchor().RawSubject}, key()
	var cas []*x509.Certificate
	for i := range 7 {
		k := key()
		c := p.issue(fmt.Sprintf("I%d", i), "", k, parent, parentKey)
		cas = append([]*x509.Certificate{c}, cas...)
		parent, parentKey = c, k
	}
	twinKey := key()
	twin1 := p.issue("T", "", twinKey, parent, parentKey)
	twin2 := p.issue("T", "", twinKey, parent, parentKey)
	leafKey := key()
	leaf := p.issue(name, name, leafKey, twin1, twinKey)
	ders := [][]byte{leaf.Raw, twin1.Raw, twin2.Raw}
	for _, c := range cas {
		ders = append(ders, c.Raw)
	}
	before := intercept.Verifications(r.ic)
	upEnd, _ := r.startUpstreamTCP(&tls.Certificate{Certificate: ders, PrivateKey: leafKey}, "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
	client.SetDeadline(time.Now().Add(waitLimit))
	start := time.Now()
	if err := client.Handshake(); err == nil {
		t.Fatal("client handshake succeeded")
	}
	t.Logf("a subject twice under 7 CAs in a line: refused in %s", time.Since(start))
	client.Close()
	sv.waitDoneOnce(t)
	if rec := r.records()[0]; rec.Action != "deny" || !strings.HasPrefix(rec.Error, "upstream certificate: x509: certificate signed by unknown authority") {
		t.Errorf("record %+v", rec)
	}
	if n := intercept.Verifications(r.ic) - before; n != 1 {
		t.Errorf("%d verifications, want 1", n)
	}
}

// TestVerifyQueueShared: with the appliance's verification slots all held
// by other clients, a client with none of its own under way waits its
// turn, and when the wait runs out the bump ends as when its own slots
// stay full: an error, not a certificate refused, and nothing verified.
// Before, there were no slots but the client's own: it verified at once,
// however many other clients were verifying.
func TestVerifyQueueShared(t *testing.T) {
	const name = "www.example.test"
	r := newRig(t, testPolicy)
	intercept.SetVerificationLimit(r.ic, 2)
	others := []func(){
		intercept.HoldVerifySlot(r.ic, testEndpoint, netip.MustParseAddr("198.51.100.8")),
		intercept.HoldVerifySlot(r.ic, testEndpoint, netip.MustParseAddr("198.51.100.9")),
	}
	before := intercept.Verifications(r.ic)
	upEnd, _ := r.startUpstreamTCP(r.upLeaf(name), "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
	client.SetDeadline(time.Now().Add(waitLimit))
	if err := client.Handshake(); err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Errorf("client handshake with every slot held: %v, want a handshake failure alert", err)
	}
	client.Close()
	sv.waitDoneOnce(t)
	rec := r.records()[0]
	if rec.Action != "bump" || rec.Result != "error" || rec.UpstreamVerify != "" ||
		rec.Error != "upstream TLS handshake: the appliance's verifications and leaf mints under way did not end in time: not verified" {
		t.Errorf("record %+v", rec)
	}
	if n := intercept.Verifications(r.ic) - before; n != 0 {
		t.Errorf("%d verifications, want none", n)
	}
	for _, release := range others {
		release()
	}
}

// TestDearRSARefused: a presented certificate whose RSA key makes every
// signature check with it dear (8192 bits: about 3 ms a check; e = 2^31-1:
// twice that) is refused before x509 sees the chain, and the record says
// which. Before, x509 checked signatures with it, at up to 50 times an
// honest key's cost. A small exponent (e = 3, as trusted roots still sent
// for old clients have) is no dearer and goes on to x509, which fails this
// chain on its own terms. The keys are public keys only: a refused chain
// is never verified, so no one needs their private halves.
func TestDearRSARefused(t *testing.T) {
	const name = "www.example.test"
	r := newRig(t, testPolicy)
	ecKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rsaPub := func(bits, e int) *rsa.PublicKey {
		b := make([]byte, bits/8)
		rand.Read(b)
		b[0] |= 0x80
		b[len(b)-1] |= 1
		return &rsa.PublicKey{N: new(big.Int).SetBytes(b), E: e}
	}
	// What signs the leaf: an RSA key, so that x509, given the chain,
	// checks the leaf's signature with the intermediate's dear key.
	rsaSigner, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	chain := func(interPub *rsa.PublicKey) *tls.Certificate {
		// The intermediate names the trusted root as its issuer; the
		// leaf names the intermediate. Neither signature holds.
		signer := ecKey()
		interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dear CA"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, &x509.Certificate{RawSubject: r.upCA.TrustAnchor().RawSubject}, interPub, signer)
		if err != nil {
			t.Fatal(err)
		}
		leafKey := ecKey()
		leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(3), DNSNames: []string{name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, interTmpl, &leafKey.PublicKey, rsaSigner)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{leafDER, interDER}, PrivateKey: leafKey}
	}
	for _, tc := range []struct {
		what     string
		pub      *rsa.PublicKey
		wantErr  string // the record's, or its prefix with wantX509
		wantX509 bool   // verified, and refused by x509
	}{
		{"RSA-8192", rsaPub(8192, 65537), `upstream certificate: RSA key of 8192 bits in "CN=dear CA", over 4096: not verified`, false},
		{"RSA-4096, e = 2^31-1", rsaPub(4096, 1<<31-1), `upstream certificate: RSA public exponent 2147483647 in "CN=dear CA", over 65537: not verified`, false},
		{"RSA-2048, e = 3", rsaPub(2048, 3), "upstream certificate: x509: ", true},
	} {
		before := intercept.Verifications(r.ic)
		upEnd, _ := r.startUpstreamTCP(chain(tc.pub), "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: r.caPool()})
		client.SetDeadline(time.Now().Add(waitLimit))
		if err := client.Handshake(); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Errorf("%s: client handshake: %v, want a bad certificate alert", tc.what, err)
		}
		client.Close()
		sv.waitDoneOnce(t)
		recs := r.records()
		rec := recs[len(recs)-1]
		t.Logf("%s: %s", tc.what, rec.Error)
		if rec.Action != "deny" || rec.Result != "denied" || rec.UpstreamVerify != "failed" ||
			!tc.wantX509 && rec.Error != tc.wantErr || tc.wantX509 && !strings.HasPrefix(rec.Error, tc.wantErr) {
			t.Errorf("%s: record %+v", tc.what, rec)
		}
		want := uint64(0)
		if tc.wantX509 {
			want = 1
		}
		if n := intercept.Verifications(r.ic) - before; n != want {
			t.Errorf("%s: %d verifications, want %d", tc.what, n, want)
		}
	}
}
