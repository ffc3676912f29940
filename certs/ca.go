package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names used by WriteFiles and LoadOrCreate inside a state directory.
const (
	CertFileName = "ca.pem"     // the CA certificate (and any issuers), PEM
	KeyFileName  = "ca-key.pem" // the CA private key, PKCS #8 PEM, mode 0600
)

// DefaultCommonName is the subject common name LoadOrCreate gives a CA it
// creates, followed by a short random suffix.
const DefaultCommonName = "gwlbproxy interception CA"

// caValidity is how long a generated CA is valid. Ten years: rotating a CA
// means redistributing it to every client, so it should be rare.
const caValidity = 10 * 365 * 24 * time.Hour

// caBackdate moves a generated CA's NotBefore into the past so that clients
// whose clocks run a little behind the appliance still accept it.
const caBackdate = time.Hour

// CA is an interception certificate authority: the certificate that signs
// leaves, its private key, and any issuer certificates loaded with it. A CA is
// immutable and safe for concurrent use.
type CA struct {
	cert   *x509.Certificate   // signs leaves; chain[0]
	chain  []*x509.Certificate // cert first, then its issuers as loaded
	key    crypto.Signer
	anchor *x509.Certificate // what clients must trust: the last cert of chain
	// intermediates are the DER certificates sent after each leaf: every cert
	// of chain except a self-signed root, which clients must already hold.
	intermediates [][]byte
	notAfter      time.Time // earliest NotAfter in the chain
	fingerprint   string
}

// Generate creates a new self-signed ECDSA P-256 CA named commonName, valid
// for ten years, that may sign leaves only (MaxPathLen 0).
func Generate(commonName string) (*CA, error) {
	return generate(commonName, time.Now(), caValidity)
}

// generate is Generate with the clock and validity as parameters so tests can
// build CAs that are near their expiry.
func generate(commonName string, now time.Time, validity time.Duration) (*CA, error) {
	if strings.TrimSpace(commonName) == "" {
		return nil, errors.New("generate CA: empty common name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("generate CA: %w", err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("generate CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"gwlbproxy"}},
		NotBefore:    now.Add(-caBackdate),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		// Server authentication only: clients install this CA as a root,
		// and a leaked key must not sign code, mail or client
		// certificates they would accept too.
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		// MaxPathLen 0: this CA signs leaves only, so a leaked leaf key can
		// never act as a CA even for clients that ignore BasicConstraints.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		SubjectKeyId:   ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("generate CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse generated CA certificate: %w", err)
	}
	return newCA([]*x509.Certificate{cert}, key), nil
}

// newCA derives the cached fields of a CA from a checked chain and key.
func newCA(chain []*x509.Certificate, key crypto.Signer) *CA {
	ca := &CA{cert: chain[0], chain: chain, key: key, anchor: chain[len(chain)-1]}
	ca.notAfter = chain[0].NotAfter
	for _, c := range chain {
		if c.NotAfter.Before(ca.notAfter) {
			ca.notAfter = c.NotAfter
		}
		if !isSelfSigned(c) {
			ca.intermediates = append(ca.intermediates, c.Raw)
		}
	}
	sum := sha256.Sum256(ca.anchor.Raw)
	ca.fingerprint = formatFingerprint(sum[:])
	return ca
}

// randomSerial returns a random positive 128-bit serial number. RFC 5280
// allows up to 20 octets; 128 random bits make collisions between the many
// leaves of many appliances negligible.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID computes a key identifier as RFC 7093 section 2 method 1
// describes: the leftmost 160 bits of the SHA-256 of the subjectPublicKey
// bits.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func formatFingerprint(sum []byte) string {
	h := strings.ToUpper(hex.EncodeToString(sum))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// Certificate returns the certificate that signs leaves. For a loaded chain
// this is the first certificate of the file, typically an intermediate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the signing certificate, PEM encoded.
func (ca *CA) CertPEM() []byte { return encodeCert(ca.cert) }

// CertDER returns the signing certificate, DER encoded.
func (ca *CA) CertDER() []byte { return bytes.Clone(ca.cert.Raw) }

// Chain returns the signing certificate followed by the issuers loaded with
// it, in file order. Generated CAs have a chain of one.
func (ca *CA) Chain() []*x509.Certificate {
	return append([]*x509.Certificate(nil), ca.chain...)
}

// TrustAnchor returns the certificate clients must trust: the last
// certificate of the chain. It is the signing certificate itself for a
// generated CA, and the root for a loaded intermediate-plus-root file. When a
// file holds an intermediate without its root, that intermediate is the best
// anchor this CA can offer.
func (ca *CA) TrustAnchor() *x509.Certificate { return ca.anchor }

// TrustPEM returns the trust anchor, PEM encoded: the ca.pem clients install.
func (ca *CA) TrustPEM() []byte { return encodeCert(ca.anchor) }

// TrustDER returns the trust anchor, DER encoded: the ca.crt clients install.
func (ca *CA) TrustDER() []byte { return bytes.Clone(ca.anchor.Raw) }

// Fingerprint returns the SHA-256 fingerprint of the trust anchor as
// colon-separated upper-case hex, the form `openssl x509 -fingerprint
// -sha256` prints, so users can compare what they installed.
func (ca *CA) Fingerprint() string { return ca.fingerprint }

// NotAfter returns the earliest expiry in the chain: no leaf can be valid
// later than that.
func (ca *CA) NotAfter() time.Time { return ca.notAfter }

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// WriteFiles writes the chain to dir/ca.pem (mode 0644) and the key to
// dir/ca-key.pem (PKCS #8, mode 0600), creating dir with mode 0700 if it does
// not exist. Existing files are replaced atomically.
func (ca *CA) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("marshal CA key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	var certPEM []byte
	for _, c := range ca.chain {
		certPEM = append(certPEM, encodeCert(c)...)
	}
	// The key goes first: a crash in between leaves a key without a
	// certificate, which LoadOrCreate reports instead of silently replacing
	// (unless its own creation marker says it was writing them).
	if err := writeFileAtomic(filepath.Join(dir, KeyFileName), keyPEM, 0o600); err != nil {
		return err
	}
	if testHookKeyWritten != nil {
		testHookKeyWritten()
	}
	return writeFileAtomic(filepath.Join(dir, CertFileName), certPEM, 0o644)
}

// writeFileAtomic writes data to a temporary file in the same directory and
// renames it over path, so readers never see a partial file, then syncs the
// file and the directory so that both the data and the name outlive a
// power cut. The mode is set
// with Chmod because the umask could otherwise narrow it.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), tempPrefix(filepath.Base(path))+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Restrict the mode before any secret byte is written.
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The rename is durable only once the directory is synced.
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Load reads a CA from a PEM certificate file and a PEM key file. The
// certificate file may hold a chain: the first certificate signs leaves and
// must be a CA matching the key; the certificates after it are its issuers, in
// order, and are sent to clients after each leaf (a self-signed root is not
// sent). The key may be PKCS #8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or
// PKCS #1 ("RSA PRIVATE KEY"); other blocks in the key file, such as the "EC
// PARAMETERS" that `openssl ecparam -genkey` writes, are skipped. Errors
// name the file at fault.
func Load(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	ca, err := parse(certPEM, keyPEM, origin{
		cert: certFile, key: keyFile,
		pair: certFile + " with key " + keyFile,
		log:  []any{"file", certFile},
	})
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		slog.Warn("CA key file is readable by other users; chmod 600 it",
			"file", keyFile, "mode", fi.Mode().Perm().String())
	}
	return ca, nil
}

// Parse builds a CA from PEM data by the rules of Load: certPEM holds the
// signing certificate followed by its issuers, keyPEM its private key.
// source says where the data came from (a file, a secret) and is named in
// errors and log messages; the data itself never appears in either.
func Parse(certPEM, keyPEM []byte, source string) (*CA, error) {
	return parse(certPEM, keyPEM, origin{
		cert: "in " + source, key: "in " + source, pair: "in " + source,
		log: []any{"source", source},
	})
}

// ParseBundle builds a CA from one PEM document holding both the
// certificates and the private key, such as `cat ca.pem ca-key.pem`: the
// CERTIFICATE blocks, in order, are the chain (as for Load), and the first
// private key block is the key. Blocks may come in any order.
func ParseBundle(bundle []byte, source string) (*CA, error) {
	return Parse(bundle, bundle, source)
}

// origin names where PEM data came from, for errors and log messages.
type origin struct {
	cert, key, pair string // "CA certificate <cert>", "CA key <key>", "CA <pair>"
	log             []any  // slog attributes naming the source
}

// parse is the one parse-and-check path of Load, Parse and ParseBundle.
func parse(certPEM, keyPEM []byte, from origin) (*CA, error) {
	chain, err := parseChain(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", from.cert, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", from.key, err)
	}
	if err := checkCA(chain, key, time.Now()); err != nil {
		return nil, fmt.Errorf("CA %s: %w", from.pair, err)
	}
	ca := newCA(chain, key)
	ca.WarnExpiry(time.Now(), from.log...)
	if !isSelfSigned(ca.anchor) {
		// Clients must then trust the anchor's issuer (or the anchor itself);
		// say so, since the trust page can only offer what it has.
		slog.Info("CA chain does not end in a self-signed root; the trust page serves its last certificate",
			append(from.log, "anchor", ca.anchor.Subject.String())...)
	}
	return ca, nil
}

// parseChain decodes every CERTIFICATE block of a PEM file, in order, and
// checks that each certificate is signed by the one after it.
func parseChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			// A combined file or bundle may carry a key or parameters;
			// parseKey reads those.
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(chain)+1, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("certificate %d (%s) is not signed by certificate %d (%s); the file must list the signing CA first, then its issuers in order: %w",
				i+1, chain[i].Subject, i+2, chain[i+1].Subject, err)
		}
	}
	for i, c := range chain[1:] {
		// Issuer n (1-based) has n CA certificates below it before the leaf;
		// a smaller path length constraint makes every leaf unverifiable.
		below := i + 1
		if c.BasicConstraintsValid && (c.MaxPathLen > 0 || c.MaxPathLenZero) && c.MaxPathLen < below {
			return nil, fmt.Errorf("certificate %d (%s) has path length constraint %d but %d CA certificates below it; clients would reject every leaf",
				below+1, c.Subject, c.MaxPathLen, below)
		}
	}
	return chain, nil
}

// parseKey returns the first private key of a PEM file.
func parseKey(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key block found (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted; decrypt it first (openssl pkey -in key.pem -out plain.pem)")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s block: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T keys cannot sign", key)
		}
		return signer, nil
	}
}

// notYetValidAdvice says what to do about a CA that is not valid yet. It
// is refused even when the policy bumps nothing now: a reload may add bump
// rules, and the CA is loaded only at start.
const notYetValidAdvice = "First check this machine's clock (timedatectl; chronyc tracking): " +
	"if it is behind (NTP not synchronised yet), fix or wait for the sync and start again. " +
	"If it is right, the CA was made on a clock running ahead: wait until then, or make a new CA and hand it to the clients " +
	"(--ca-cert/--ca-key: gwlbproxy ca init --force --out DIR; the --state-dir CA: remove its ca.pem and ca-key.pem and start again; " +
	"--ca-secret: put a new CA in the secret)"

// checkCA verifies that chain[0] can sign server leaves with key.
func checkCA(chain []*x509.Certificate, key crypto.Signer, now time.Time) error {
	c := chain[0]
	pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return errors.New("the private key does not match the certificate's public key")
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("certificate %s is not a CA (basic constraints CA:TRUE missing)", c.Subject)
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %s may not sign certificates (key usage lacks keyCertSign)", c.Subject)
	}
	if len(c.ExtKeyUsage) > 0 {
		// Verifiers nest EKUs: a CA restricted to, say, clientAuth makes every
		// serverAuth leaf below it invalid.
		ok := false
		for _, u := range c.ExtKeyUsage {
			if u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("certificate %s has an extended key usage without serverAuth", c.Subject)
		}
	}
	for _, cc := range chain {
		if now.After(cc.NotAfter) {
			return fmt.Errorf("certificate %s expired at %s", cc.Subject, cc.NotAfter.UTC().Format(time.RFC3339))
		}
		// Not valid yet: every client would refuse every leaf below it,
		// whatever the leaves' own dates, until then.
		if now.Before(cc.NotBefore) {
			return fmt.Errorf("certificate %s is not valid until %s (now %s): clients would refuse every leaf it signs. %s",
				cc.Subject, cc.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), notYetValidAdvice)
		}
	}
	return nil
}

// LoadOrCreate loads stateDir/ca.pem and stateDir/ca-key.pem, or, when
// neither exists, generates a CA and writes them. created reports which
// happened. Only one of the two files existing is an error: replacing a lone
// key or certificate could destroy the CA clients already trust. The
// exception is what a creation of its own left when it was cut short
// between the two files (a stop or crash during the first start), which
// the marker file it writes first tells apart: that half-written CA was
// never served, and is made anew.
func LoadOrCreate(stateDir string) (ca *CA, created bool, err error) {
	unlock, err := lockStateDir(stateDir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	certFile := filepath.Join(stateDir, CertFileName)
	keyFile := filepath.Join(stateDir, KeyFileName)
	certExists, err := exists(certFile)
	if err != nil {
		return nil, false, err
	}
	keyExists, err := exists(keyFile)
	if err != nil {
		return nil, false, err
	}
	interrupted, err := exists(filepath.Join(stateDir, creatingFileName))
	if err != nil {
		return nil, false, err
	}
	if interrupted && !(certExists && keyExists) {
		if err := discardInterrupted(stateDir); err != nil {
			return nil, false, err
		}
		certExists, keyExists = false, false
	}
	switch {
	case certExists && keyExists:
		ca, err := Load(certFile, keyFile)
		if err == nil && interrupted { // stopped after both files: complete
			// The CA is whole and checked, so a marker that cannot go (a
			// read-only state directory) must not stop the start: it only
			// says a creation was under way, and with both files present
			// it is never acted on.
			rerr := removeIfExists(filepath.Join(stateDir, creatingFileName))
			if rerr == nil {
				rerr = syncDir(stateDir)
			}
			if rerr != nil {
				slog.Warn("the CA is complete but removing its creation marker failed; remove it by hand",
					"dir", stateDir, "err", rerr)
			}
		}
		return ca, false, err
	case certExists:
		return nil, false, fmt.Errorf("%s exists but %s does not; restore the key or remove both to create a new CA", certFile, keyFile)
	case keyExists:
		return nil, false, fmt.Errorf("%s exists but %s does not; restore the certificate or remove both to create a new CA", keyFile, certFile)
	}
	// A random suffix tells rotated CAs apart in trust stores and keychains,
	// which list certificates by subject.
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, false, fmt.Errorf("create CA: %w", err)
	}
	ca, err = Generate(DefaultCommonName + " " + hex.EncodeToString(suffix))
	if err != nil {
		return nil, false, err
	}
	if err := createFiles(ca, stateDir); err != nil {
		return nil, false, fmt.Errorf("create CA: %w", err)
	}
	slog.Info("created interception CA", "dir", stateDir,
		"subject", ca.cert.Subject.String(), "fingerprint", ca.fingerprint)
	return ca, true, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", path, err)
}
