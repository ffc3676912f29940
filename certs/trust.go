package certs

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// DefaultTrustHost is the host name clients fetch the CA from, like
// mitmproxy's mitm.it. It sits under .internal, which ICANN reserves for
// private use, so it can never resolve on the public internet and nobody
// outside can answer for it: the appliance recognises it
// on the data path (Host header) and serves TrustHandler itself instead of
// dialling anywhere. Clients still need the name to resolve to some address
// routed through the GWLB (a private DNS record, an /etc/hosts line, or the
// proxy answering the lookup); the fingerprint on the page lets users check
// that what they fetched over plain HTTP is the real CA.
const DefaultTrustHost = "gwlbproxy.internal"

// platform is one set of install steps, rendered both on the HTML page and by
// WriteTrustCommands so the two never disagree.
type platform struct {
	ID       string // HTML anchor
	Name     string
	Intro    string
	Commands []string
	Note     string
}

// platforms returns the install steps with URLs for trustHost.
func platforms(trustHost string) []platform {
	pemURL := "http://" + trustHost + "/ca.pem"
	crtURL := "http://" + trustHost + "/ca.crt"
	rhelSteps := []string{
		"sudo curl -fsSL -o /etc/pki/ca-trust/source/anchors/gwlbproxy-ca.pem " + pemURL,
		"sudo update-ca-trust extract",
	}
	return []platform{
		{
			ID:       "amazon-linux",
			Name:     "Amazon Linux 2 and Amazon Linux 2023",
			Intro:    "Adds the CA to the system store, which curl, wget, OpenSSL, Go programs and Python's ssl module use.",
			Commands: rhelSteps,
		},
		{
			ID:    "debian",
			Name:  "Ubuntu and Debian",
			Intro: "Adds the CA to the system store, which curl, wget, OpenSSL, Go programs and Python's ssl module use.",
			Commands: []string{
				"sudo curl -fsSL -o /usr/local/share/ca-certificates/gwlbproxy-ca.crt " + pemURL,
				"sudo update-ca-certificates",
			},
			Note: "The file name must end in .crt even though its content is PEM. On minimal images install the tools first: sudo apt-get install -y ca-certificates curl",
		},
		{
			ID:       "rhel",
			Name:     "RHEL, CentOS Stream, Rocky Linux, AlmaLinux and Fedora",
			Intro:    "The same steps as Amazon Linux: the CA goes into the system store.",
			Commands: rhelSteps,
		},
		{
			ID:    "windows",
			Name:  "Windows",
			Intro: "In PowerShell run as Administrator. Adds the CA to the machine's Trusted Root Certification Authorities, which Edge, Chrome and most Windows programs use.",
			Commands: []string{
				`Invoke-WebRequest -UseBasicParsing -Uri ` + crtURL + ` -OutFile "$env:TEMP\gwlbproxy-ca.crt"`,
				`Import-Certificate -FilePath "$env:TEMP\gwlbproxy-ca.crt" -CertStoreLocation Cert:\LocalMachine\Root`,
			},
			Note: `From cmd.exe, certutil -addstore -f Root gwlbproxy-ca.crt does the same. Firefox keeps its own store unless security.enterprise_roots.enabled is true.`,
		},
		{
			ID:    "macos",
			Name:  "macOS",
			Intro: "Adds the CA to the System keychain as trusted for all uses, which Safari, Chrome and most macOS programs use.",
			Commands: []string{
				"curl -fsSL -o /tmp/gwlbproxy-ca.pem " + pemURL,
				"sudo security add-trusted-cert -d -r trustRoot -p ssl -k /Library/Keychains/System.keychain /tmp/gwlbproxy-ca.pem",
			},
		},
		{
			ID:    "java",
			Name:  "Java (keytool)",
			Intro: "Many JDKs keep their own keystore (cacerts) instead of using the system store. Import the CA into each JDK that makes HTTPS calls, then restart its programs. -cacerts needs Java 9 or later; for Java 8 use -keystore \"$JAVA_HOME/jre/lib/security/cacerts\" instead.",
			Commands: []string{
				"curl -fsSL -o /tmp/gwlbproxy-ca.pem " + pemURL,
				"sudo keytool -importcert -noprompt -cacerts -storepass changeit -alias gwlbproxy -file /tmp/gwlbproxy-ca.pem",
			},
			Note: "changeit is the JDK's default keystore password. To replace an older gwlbproxy CA, first run: sudo keytool -delete -cacerts -storepass changeit -alias gwlbproxy",
		},
		{
			ID:    "python",
			Name:  "Python (requests, certifi, urllib)",
			Intro: "requests and many other libraries use certifi's bundle, not the system store. REQUESTS_CA_BUNDLE (requests) and SSL_CERT_FILE (the ssl module, urllib, httpx) replace the default bundle, so point them at a bundle holding the public roots and this CA. A file with this CA alone would break every connection the proxy does not intercept.",
			Commands: []string{
				`curl -fsSL -o "$HOME/gwlbproxy-ca.pem" ` + pemURL,
				`cat "$(python3 -m certifi)" "$HOME/gwlbproxy-ca.pem" > "$HOME/gwlbproxy-bundle.pem"`,
				`export REQUESTS_CA_BUNDLE="$HOME/gwlbproxy-bundle.pem"`,
				`export SSL_CERT_FILE="$HOME/gwlbproxy-bundle.pem"`,
			},
			Note: "If the CA is already in the system store, use the system bundle instead: /etc/pki/tls/certs/ca-bundle.crt (Amazon Linux, RHEL) or /etc/ssl/certs/ca-certificates.crt (Ubuntu, Debian).",
		},
		{
			ID:    "nodejs",
			Name:  "Node.js",
			Intro: "Node.js ships its own roots. NODE_EXTRA_CA_CERTS adds to them rather than replacing them, so a file with this CA alone is right here. Node reads it only when a process starts.",
			Commands: []string{
				`curl -fsSL -o "$HOME/gwlbproxy-ca.pem" ` + pemURL,
				`export NODE_EXTRA_CA_CERTS="$HOME/gwlbproxy-ca.pem"`,
			},
		},
		{
			ID:    "aws-cli",
			Name:  "AWS CLI",
			Intro: "The AWS CLI version 2 ships its own roots. AWS_CA_BUNDLE replaces them, so point it at a full bundle: the system bundle once the CA is in the system store (see the Linux steps above), or the combined bundle from the Python steps. With this CA alone, calls to endpoints the proxy does not intercept would fail.",
			Commands: []string{
				"export AWS_CA_BUNDLE=/etc/pki/tls/certs/ca-bundle.crt",
				"aws configure set ca_bundle /etc/pki/tls/certs/ca-bundle.crt",
			},
			Note: "The first line sets it for the shell, the second for the profile in ~/.aws/config. On Ubuntu and Debian the system bundle is /etc/ssl/certs/ca-certificates.crt. boto3 and the AWS SDK for Go v2 read AWS_CA_BUNDLE too.",
		},
	}
}

// pageData is what the trust page template renders.
type pageData struct {
	Subject     string
	Fingerprint string
	NotAfter    string
	PEMURL      string
	CRTURL      string
	Platforms   []platform
}

var pageTemplate = template.Must(template.New("trust").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gwlbproxy interception CA</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }
pre { background: #f4f4f4; padding: .75rem; overflow-x: auto; }
code, pre { font-family: ui-monospace, monospace; }
dt { font-weight: bold; }
.fp { word-break: break-all; }
</style>
</head>
<body>
<h1>gwlbproxy interception CA</h1>

<p>Outbound traffic from this network passes through gwlbproxy, an egress proxy
run by your organisation. To log and filter HTTPS requests it decrypts them and
re-encrypts them with certificates signed by the certificate authority (CA)
below. Programs that do not trust this CA will report certificate errors for
intercepted sites.</p>

<p>Install the CA only on machines whose traffic goes through this proxy.
Whoever holds its private key can impersonate any website to machines that
trust it, so make sure the fingerprint below matches the one your network
team published.</p>

<h2>The certificate</h2>
<dl>
<dt>Subject</dt><dd>{{.Subject}}</dd>
<dt>SHA-256 fingerprint</dt><dd class="fp"><code>{{.Fingerprint}}</code></dd>
<dt>Valid until</dt><dd>{{.NotAfter}}</dd>
</dl>

<h2>Download</h2>
<ul>
<li><a href="ca.pem">ca.pem</a>: PEM, for Linux, macOS and most tools.</li>
<li><a href="ca.crt">ca.crt</a>: DER, for Windows (<a href="ca.der">ca.der</a> is the same file).</li>
</ul>

<p>The commands below fetch the same files from <code>{{.PEMURL}}</code> and
<code>{{.CRTURL}}</code>. After downloading, check the fingerprint:</p>
<pre>openssl x509 -noout -fingerprint -sha256 -in gwlbproxy-ca.pem</pre>
<p>On Windows, <code>(Get-FileHash gwlbproxy-ca.crt).Hash</code> prints the
same fingerprint without the colons.</p>

<h2>Install</h2>
<ul>
{{- range .Platforms}}
<li><a href="#{{.ID}}">{{.Name}}</a></li>
{{- end}}
</ul>
{{range .Platforms}}
<h3 id="{{.ID}}">{{.Name}}</h3>
<p>{{.Intro}}</p>
<pre>{{range .Commands}}{{.}}
{{end}}</pre>
{{- if .Note}}
<p>{{.Note}}</p>
{{- end}}
{{end}}
</body>
</html>
`))

// trustData collects what both the page and the terminal text show.
func trustData(ca *CA, trustHost string) pageData {
	if trustHost == "" {
		trustHost = DefaultTrustHost
	}
	a := ca.TrustAnchor()
	return pageData{
		Subject:     a.Subject.String(),
		Fingerprint: ca.Fingerprint(),
		NotAfter:    a.NotAfter.UTC().Format(time.RFC1123),
		PEMURL:      "http://" + trustHost + "/ca.pem",
		CRTURL:      "http://" + trustHost + "/ca.crt",
		Platforms:   platforms(trustHost),
	}
}

// TrustHandler serves the CA to clients: "/" is a page explaining what the
// CA is, its fingerprint and install steps per platform; "/ca.pem" is the
// trust anchor as PEM; "/ca.crt" and "/ca.der" are the same certificate as
// DER. Other paths are 404, methods other than GET and HEAD 405.
//
// trustHost (DefaultTrustHost if empty) is the host the install commands
// fetch from. The page links to the files relatively, so the handler can be
// mounted under a prefix ending in a slash, e.g.
// mux.Handle("/ca/", http.StripPrefix("/ca", h)).
func TrustHandler(ca *CA, trustHost string) http.Handler {
	var page bytes.Buffer
	if err := pageTemplate.Execute(&page, trustData(ca, trustHost)); err != nil {
		// Only a broken template can fail here; tests render it.
		slog.Error("render CA trust page", "err", err)
		page.Reset()
		page.WriteString("<!DOCTYPE html><title>gwlbproxy CA</title><p><a href=\"ca.pem\">ca.pem</a> <a href=\"ca.crt\">ca.crt</a></p>")
	}
	pemBytes := ca.TrustPEM()
	derBytes := ca.TrustDER()

	mux := http.NewServeMux()
	// "GET" patterns also match HEAD; other methods get 405 from the mux.
	mux.Handle("GET /{$}", fileHandler(page.Bytes(), "text/html; charset=utf-8", ""))
	mux.Handle("GET /ca.pem", fileHandler(pemBytes, "application/x-pem-file", `attachment; filename="gwlbproxy-ca.pem"`))
	// DER with this type lets browsers and Android offer to install the CA,
	// so it is not forced to a download.
	der := fileHandler(derBytes, "application/x-x509-ca-cert", `inline; filename="gwlbproxy-ca.crt"`)
	mux.Handle("GET /ca.crt", der)
	mux.Handle("GET /ca.der", der)
	return mux
}

func fileHandler(body []byte, contentType, disposition string) http.Handler {
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Content-Length", length)
		h.Set("X-Content-Type-Options", "nosniff")
		// The CA may be rotated; clients should not keep a stale copy.
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if disposition != "" {
			h.Set("Content-Disposition", disposition)
		}
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(body)
	})
}

// WriteTrustCommands prints the CA's identity and the install commands of the
// trust page for a terminal (`gwlbproxy ca trust`). The commands fetch from
// http://<trustHost>/ca.pem; trustHost defaults to DefaultTrustHost. It
// returns the first write error.
func WriteTrustCommands(w io.Writer, ca *CA, trustHost string) error {
	d := trustData(ca, trustHost)
	ew := &errWriter{w: w}
	ew.printf("gwlbproxy interception CA\n")
	ew.printf("  Subject:     %s\n", d.Subject)
	ew.printf("  SHA-256:     %s\n", d.Fingerprint)
	ew.printf("  Valid until: %s\n", d.NotAfter)
	ew.printf("  Download:    %s (PEM), %s (DER)\n\n", d.PEMURL, d.CRTURL)
	ew.printf("Check the fingerprint of a downloaded copy with:\n")
	ew.printf("  openssl x509 -noout -fingerprint -sha256 -in gwlbproxy-ca.pem\n")
	for _, p := range d.Platforms {
		ew.printf("\n# %s\n# %s\n", p.Name, p.Intro)
		for _, c := range p.Commands {
			ew.printf("  %s\n", c)
		}
		if p.Note != "" {
			ew.printf("# %s\n", p.Note)
		}
	}
	if ew.err != nil {
		return fmt.Errorf("write trust commands: %w", ew.err)
	}
	return nil
}

// errWriter keeps the first write error so a sequence of prints needs one
// check.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	_, e.err = fmt.Fprintf(e.w, format, args...)
}
