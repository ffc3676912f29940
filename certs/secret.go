package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/gwlbproxy/gwlbproxy/internal/awsconf"
)

// DefaultSecretTimeout bounds LoadSecret when Secret.Timeout is zero.
const DefaultSecretTimeout = 10 * time.Second

// maxSecretBytes is the most a Secrets Manager secret can hold (64 KiB); a
// larger answer is not a secret this package wrote.
const maxSecretBytes = 65536

// Secret names a CA kept in AWS Secrets Manager, so that every instance of
// an Auto Scaling group presents the same CA.
//
// The secret's value (SecretString, or SecretBinary with the same content)
// is one PEM document holding the CA certificate, optionally followed by its
// issuers as for Load, and the CA's private key: `cat ca.pem ca-key.pem` of
// what `gwlbproxy ca init` writes.
type Secret struct {
	// ID is the secret's name or ARN; required.
	ID string
	// Region is where the secret lives. Empty: the region in ID when it is
	// an ARN, else the default chain's (environment, shared configuration,
	// then instance metadata).
	Region string
	// Endpoint overrides the Secrets Manager endpoint, e.g. an interface
	// VPC endpoint's URL, or a local one in tests.
	Endpoint string
	// Timeout bounds the whole load: configuration (including an instance
	// metadata region lookup), credentials and the call with its retries.
	// Zero means DefaultSecretTimeout.
	Timeout time.Duration
}

// LoadSecret fetches s with GetSecretValue (the current version), using
// credentials from the default chain, and parses its value as ParseBundle
// does. Errors name the secret and say what to check: a secret that does
// not exist, access denied, a KMS key the role may not use, an endpoint that
// cannot be reached or does not answer within the timeout. Neither errors
// nor logs ever carry the secret's value.
func LoadSecret(ctx context.Context, s Secret) (*CA, error) {
	if s.ID == "" {
		return nil, errors.New("CA secret: no secret name or ARN given")
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultSecretTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	region := s.Region
	if region == "" {
		// Secrets Manager answers only for secrets of its own region: a
		// full ARN says which that is.
		if a, err := arn.Parse(s.ID); err == nil && a.Service == "secretsmanager" {
			region = a.Region
		}
	}
	cfg, err := awsconf.Load(ctx, region)
	if err != nil {
		return nil, fmt.Errorf("CA secret %q: %w", s.ID, err)
	}
	client := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		if s.Endpoint != "" {
			o.BaseEndpoint = aws.String(s.Endpoint)
		}
	})
	start := time.Now()
	out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(s.ID)})
	if err != nil {
		return nil, explainSecretError(ctx, err, s, cfg.Region, timeout)
	}
	var value []byte
	switch {
	case out.SecretString != nil && *out.SecretString != "":
		value = []byte(*out.SecretString)
	case len(out.SecretBinary) > 0:
		value = out.SecretBinary
	default:
		return nil, fmt.Errorf("CA secret %q has no value (neither SecretString nor SecretBinary)", s.ID)
	}
	if len(value) > maxSecretBytes {
		return nil, fmt.Errorf("CA secret %q: %d bytes, more than a secret can hold", s.ID, len(value))
	}
	if err := checkSecretShape(value); err != nil {
		return nil, fmt.Errorf("CA secret %q: %w", s.ID, err)
	}
	ca, err := ParseBundle(value, fmt.Sprintf("secret %q", s.ID))
	if err != nil {
		return nil, err
	}
	slog.Info("loaded the interception CA from Secrets Manager",
		"secret", s.ID, "version", aws.ToString(out.VersionId),
		"subject", ca.cert.Subject.String(), "fingerprint", ca.fingerprint,
		"took", time.Since(start).Round(time.Millisecond))
	return ca, nil
}

// checkSecretShape catches the usual ways a PEM bundle gets mangled on its
// way into a secret, with a hint instead of "no PEM block found". It looks
// only at the shape, never quoting the value.
func checkSecretShape(v []byte) error {
	t := bytes.TrimSpace(v)
	if len(t) > 0 && t[0] == '{' {
		return errors.New("the value is JSON (key/value pairs), not PEM: store the PEM bundle itself as the secret string, e.g. --secret-string file://bundle.pem made with `cat ca.pem ca-key.pem`")
	}
	if bytes.Contains(t, []byte("-----BEGIN")) && !bytes.Contains(t, []byte("\n")) && bytes.Contains(t, []byte(`\n`)) {
		return errors.New(`the PEM's line breaks were stored as the two characters \n: store the file's content as it is, e.g. --secret-string file://bundle.pem`)
	}
	return nil
}

// explainSecretError turns a GetSecretValue failure into an error that
// names the secret and the likely fix, keeping the SDK's error wrapped.
func explainSecretError(ctx context.Context, err error, s Secret, region string, timeout time.Duration) error {
	where := "Secrets Manager in " + region
	if s.Endpoint != "" {
		where = "Secrets Manager endpoint " + s.Endpoint + " (region " + region + ")"
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch code := apiErr.ErrorCode(); code {
		case "ResourceNotFoundException":
			return fmt.Errorf("CA secret %q not found (%s from %s): check its name or ARN and the region (--ca-secret-region): %w",
				s.ID, code, where, err)
		case "AccessDeniedException":
			return fmt.Errorf("CA secret %q: access denied (%s from %s): the instance role needs secretsmanager:GetSecretValue on the secret (and kms:Decrypt on its key if that is a customer-managed KMS key): %w",
				s.ID, code, where, err)
		case "DecryptionFailure":
			return fmt.Errorf("CA secret %q cannot be decrypted (%s from %s): the instance role needs kms:Decrypt on the secret's KMS key: %w",
				s.ID, code, where, err)
		case "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignature",
			"ExpiredTokenException", "InvalidClientTokenId", "MissingAuthenticationTokenException":
			return fmt.Errorf("CA secret %q: the AWS credentials were refused (%s from %s): %w", s.ID, code, where, err)
		case "InvalidRequestException":
			return fmt.Errorf("CA secret %q: request refused (%s from %s; a secret scheduled for deletion cannot be read): %w",
				s.ID, code, where, err)
		default:
			return fmt.Errorf("CA secret %q: %s from %s: %w", s.ID, code, where, err)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("CA secret %q: no answer from %s within %s (is it reachable from here? in a private subnet, through a secretsmanager VPC endpoint or a NAT gateway): %w",
			s.ID, where, timeout, err)
	}
	if msg := err.Error(); strings.Contains(msg, "get identity:") || strings.Contains(msg, "failed to retrieve credentials") {
		return fmt.Errorf("CA secret %q: no AWS credentials (on EC2, attach an instance role): %w", s.ID, err)
	}
	var netErr net.Error
	var opErr *net.OpError
	if errors.As(err, &opErr) || errors.As(err, &netErr) {
		return fmt.Errorf("CA secret %q: cannot reach %s: %w", s.ID, where, err)
	}
	return fmt.Errorf("CA secret %q: reading it from %s: %w", s.ID, where, err)
}
