// Package secretstest runs a local endpoint that speaks the AWS Secrets
// Manager JSON protocol (awsJson1.1: POST / with X-Amz-Target
// "secretsmanager.<Operation>") for GetSecretValue, so that tests can point
// the real aws-sdk-go-v2 client at it. It refuses requests that are not
// SigV4-signed, answers unknown secrets with ResourceNotFoundException as
// the service does, and injects errors and hangs per secret. It listens on
// 127.0.0.1 only.
package secretstest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Account and Region make up the ARNs the endpoint gives its secrets.
const (
	Account = "123456789012"
	Region  = "us-east-1"
)

// Request is a request the endpoint received.
type Request struct {
	Target      string // X-Amz-Target
	ContentType string
	SecretID    string // the body's SecretId
	Signed      bool   // Authorization carries a SigV4 signature
	AccessKey   string // from the signature's credential scope
	Region      string // from the signature's credential scope
	Service     string // from the signature's credential scope
}

type secret struct {
	name, arn string
	str       *string
	bin       []byte
	fail      *apiError
	hang      bool
}

type apiError struct {
	status        int
	code, message string
}

// Server is the local Secrets Manager endpoint.
type Server struct {
	// URL is the endpoint's base URL, e.g. http://127.0.0.1:41234.
	URL string

	srv  *httptest.Server
	done chan struct{} // closed on Close: releases hanging requests

	mu       sync.Mutex
	secrets  map[string]*secret // by name and by ARN
	requests []Request
}

// NewServer starts an endpoint on 127.0.0.1 and stops it when tb ends.
func NewServer(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{secrets: map[string]*secret{}, done: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("secretstest: listening: %v", err)
	}
	s.srv = httptest.NewUnstartedServer(s)
	s.srv.Listener = ln
	s.srv.Start()
	s.URL = s.srv.URL
	tb.Cleanup(s.Close)
	return s
}

// Close stops the endpoint; hanging requests are released first.
func (s *Server) Close() {
	s.mu.Lock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.mu.Unlock()
	s.srv.Close()
}

// ARN returns the ARN the endpoint gives the secret called name.
func ARN(name string) string {
	return fmt.Sprintf("arn:aws:secretsmanager:%s:%s:secret:%s-AbCdEf", Region, Account, name)
}

func (s *Server) put(name string, mod func(*secret)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := &secret{name: name, arn: ARN(name)}
	mod(sec)
	s.secrets[sec.name] = sec
	s.secrets[sec.arn] = sec
}

// PutString stores a secret whose value is a SecretString.
func (s *Server) PutString(name, value string) {
	s.put(name, func(sec *secret) { sec.str = &value })
}

// PutBinary stores a secret whose value is a SecretBinary.
func (s *Server) PutBinary(name string, value []byte) {
	s.put(name, func(sec *secret) { sec.bin = append([]byte(nil), value...) })
}

// Fail makes requests for the secret called name fail with the HTTP status
// and error code, e.g. 400 and "AccessDeniedException".
func (s *Server) Fail(name string, status int, code, message string) {
	s.put(name, func(sec *secret) { sec.fail = &apiError{status, code, message} })
}

// Hang makes requests for the secret called name go unanswered until the
// client gives up or the endpoint closes.
func (s *Server) Hang(name string) {
	s.put(name, func(sec *secret) { sec.hang = true })
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// ServeHTTP implements the protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	req := Request{Target: r.Header.Get("X-Amz-Target"), ContentType: r.Header.Get("Content-Type")}
	req.Signed, req.AccessKey, req.Region, req.Service = parseAuthorization(r.Header.Get("Authorization"))
	var in struct {
		SecretId     string
		VersionId    string
		VersionStage string
	}
	jsonErr := json.Unmarshal(body, &in)
	req.SecretID = in.SecretId
	s.mu.Lock()
	s.requests = append(s.requests, req)
	sec := s.secrets[in.SecretId]
	s.mu.Unlock()

	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/":
		writeError(w, 404, "UnknownOperationException", "")
		return
	case !req.Signed:
		writeError(w, 400, "MissingAuthenticationTokenException", "Request is missing Authentication Token")
		return
	case req.Service != "secretsmanager":
		writeError(w, 400, "InvalidSignatureException", "Credential should be scoped to correct service: 'secretsmanager'.")
		return
	case req.ContentType != "application/x-amz-json-1.1":
		writeError(w, 400, "SerializationException", "wrong content type "+req.ContentType)
		return
	case req.Target != "secretsmanager.GetSecretValue":
		writeError(w, 400, "UnknownOperationException", "")
		return
	case jsonErr != nil:
		writeError(w, 400, "SerializationException", "body is not JSON")
		return
	case in.SecretId == "":
		writeError(w, 400, "InvalidParameterException", "SecretId is required")
		return
	case sec == nil:
		writeError(w, 400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
		return
	case sec.hang:
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
		return
	case sec.fail != nil:
		writeError(w, sec.fail.status, sec.fail.code, sec.fail.message)
		return
	}
	out := map[string]any{
		"ARN":           sec.arn,
		"Name":          sec.name,
		"VersionId":     "11111111-2222-3333-4444-555555555555",
		"VersionStages": []string{"AWSCURRENT"},
		"CreatedDate":   float64(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Unix()),
	}
	if sec.str != nil {
		out["SecretString"] = *sec.str
	}
	if sec.bin != nil {
		out["SecretBinary"] = sec.bin // encoding/json: base64, as the service sends blobs
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(out)
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "Message": message})
}

// parseAuthorization reads a SigV4 Authorization header:
// "AWS4-HMAC-SHA256 Credential=AKID/20260102/us-east-1/secretsmanager/aws4_request,
// SignedHeaders=..., Signature=...".
func parseAuthorization(h string) (signed bool, accessKey, region, service string) {
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return false, "", "", ""
	}
	var cred, sig string
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			cred = v
		case "Signature":
			sig = v
		}
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || len(sig) != 64 {
		return false, "", "", ""
	}
	return true, scope[0], scope[2], scope[3]
}

// SetEnv points the AWS default chain of the running test at fake static
// credentials and the given region ("" for none), and away from shared
// configuration files, SSO and the instance metadata service, so that a real
// client configured from the environment talks only to this endpoint.
func SetEnv(t testing.TB, region string) {
	t.Helper()
	dir := t.TempDir()
	for _, kv := range [][2]string{
		{"AWS_ACCESS_KEY_ID", AccessKeyID},
		{"AWS_SECRET_ACCESS_KEY", "secretstest-not-a-secret"},
		{"AWS_SESSION_TOKEN", ""},
		{"AWS_PROFILE", ""},
		{"AWS_REGION", region},
		{"AWS_DEFAULT_REGION", ""},
		{"AWS_ENDPOINT_URL", ""},
		{"AWS_ENDPOINT_URL_SECRETS_MANAGER", ""},
		{"AWS_CONFIG_FILE", dir + "/config"},
		{"AWS_SHARED_CREDENTIALS_FILE", dir + "/credentials"},
		{"AWS_EC2_METADATA_DISABLED", "true"},
	} {
		t.Setenv(kv[0], kv[1])
	}
}

// AccessKeyID is the access key SetEnv sets.
const AccessKeyID = "AKIDSECRETSTEST"
