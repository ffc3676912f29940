package cwlogs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"

	"github.com/gwlbproxy/gwlbproxy/internal/awsconf"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultFlushInterval  = 5 * time.Second
	DefaultBufferBytes    = 64 << 20
	DefaultRetryMin       = 200 * time.Millisecond
	DefaultRetryMax       = 30 * time.Second
	DefaultRequestTimeout = 30 * time.Second

	// MinBufferBytes is the smallest accepted Config.BufferBytes: the buffer
	// must hold a full batch in flight plus room for new records while that
	// batch is retried.
	MinBufferBytes = 4 << 20
)

// Config configures a Shipper.
type Config struct {
	// Group is the log group; required.
	Group string
	// Stream is the log stream; empty means DefaultStream (the EC2 instance
	// ID, else the host name).
	Stream string
	// Region overrides the region of the default credential chain.
	Region string
	// Endpoint overrides the CloudWatch Logs endpoint (a VPC endpoint, or a
	// local one in tests), e.g. "https://logs.eu-west-1.amazonaws.com".
	Endpoint string
	// RetentionDays is applied with PutRetentionPolicy to a group this
	// shipper creates (never to an existing one, whose owner chose its
	// retention). Zero keeps events forever. Must be a value the service
	// accepts (1, 3, 5, 7, 14, 30, 60, 90, ...).
	RetentionDays int32
	// FlushInterval bounds how long a record waits before a partial batch is
	// sent. Default 5 s.
	FlushInterval time.Duration
	// BufferBytes bounds the memory held by records not yet shipped,
	// including the batch in flight. Each record is charged its length plus
	// RecordOverhead. When full, the oldest records are dropped and counted.
	// Default 64 MiB, minimum MinBufferBytes.
	BufferBytes int
	// RetryMin and RetryMax bound the exponential backoff between attempts
	// (with jitter: each wait is drawn from [d/2, d]). Defaults 200 ms and
	// 30 s.
	RetryMin, RetryMax time.Duration
	// RequestTimeout bounds one API call. A call that times out is retried;
	// if the service had in fact stored the batch, that retry duplicates it,
	// so keep this well above the service's normal latency. Default 30 s.
	// Once Close has begun, a call is bounded tighter: by half the time
	// Close has left (at least 0.5 s) and at most 5 s.
	RequestTimeout time.Duration
}

func (c *Config) setDefaults() error {
	if c.Group == "" {
		return fmt.Errorf("cwlogs: log group is required")
	}
	if c.Stream == "" {
		return fmt.Errorf("cwlogs: log stream is required")
	}
	// A name the service refuses would fail every batch, or loop on
	// creating what cannot be created: refuse it at start.
	if err := CheckGroupName(c.Group); err != nil {
		return fmt.Errorf("cwlogs: log group %q: %w", c.Group, err)
	}
	if err := CheckStreamName(c.Stream); err != nil {
		return fmt.Errorf("cwlogs: log stream %q: %w", c.Stream, err)
	}
	if c.RetentionDays != 0 && !ValidRetentionDays(c.RetentionDays) {
		return fmt.Errorf("cwlogs: retention of %d days is not a value CloudWatch Logs accepts", c.RetentionDays)
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.BufferBytes == 0 {
		c.BufferBytes = DefaultBufferBytes
	}
	if c.BufferBytes < MinBufferBytes {
		return fmt.Errorf("cwlogs: buffer of %d bytes is below the minimum of %d", c.BufferBytes, MinBufferBytes)
	}
	if c.RetryMin <= 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = c.RetryMin
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	return nil
}

// MaxNameLength is the longest log group or log stream name, in characters.
const MaxNameLength = 512

// CheckGroupName reports whether CloudWatch Logs accepts name as a log group
// name: 1 to 512 characters, each an ASCII letter or digit or one of
// '.', '-', '_', '/' and '#'.
func CheckGroupName(name string) error {
	ok := name != "" && len(name) <= MaxNameLength
	for i := 0; ok && i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == '/', c == '#':
		default:
			ok = false
		}
	}
	if !ok {
		return errors.New("a log group name is 1 to 512 characters, each a letter, a digit or one of . - _ / #")
	}
	return nil
}

// CheckStreamName reports whether CloudWatch Logs accepts name as a log
// stream name: 1 to 512 characters, none of them ':' or '*'.
func CheckStreamName(name string) error {
	if name == "" || utf8.RuneCountInString(name) > MaxNameLength || strings.ContainsAny(name, ":*") {
		return errors.New("a log stream name is 1 to 512 characters, none of them ':' or '*'")
	}
	return nil
}

// retentionDays lists the values PutRetentionPolicy accepts.
var retentionDays = []int32{1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}

// ValidRetentionDays reports whether CloudWatch Logs accepts d as a
// retention period in days.
func ValidRetentionDays(d int32) bool {
	for _, v := range retentionDays {
		if v == d {
			return true
		}
	}
	return false
}

// NewClient returns a CloudWatch Logs client configured from the default
// chain (environment, shared config, IMDSv2 on EC2), with region and endpoint
// overriding it when not empty. The client keeps the SDK's standard retryer:
// it suits interactive calls (queries); the Shipper replaces it per call with
// its own backoff.
func NewClient(ctx context.Context, region, endpoint string) (*cloudwatchlogs.Client, error) {
	cfg, err := awsconf.Load(ctx, region)
	if err != nil {
		return nil, fmt.Errorf("cwlogs: %w", err)
	}
	return cloudwatchlogs.NewFromConfig(cfg, func(o *cloudwatchlogs.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	}), nil
}

// imdsTimeout bounds the instance-ID lookup: off EC2 (or with IMDS blocked by
// a hop limit) the lookup would otherwise stall start-up.
const imdsTimeout = 2 * time.Second

// DefaultStream returns the default log stream name: the EC2 instance ID read
// from IMDSv2 (AWS_EC2_METADATA_DISABLED=true skips it), else the host name.
// Characters the service refuses in stream names (':' and '*') are replaced.
func DefaultStream(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, imdsTimeout)
	defer cancel()
	client := imds.New(imds.Options{
		// Two quick attempts: IMDS answers in milliseconds when present.
		Retryer: retry.AddWithMaxAttempts(retry.NewStandard(), 2),
	})
	out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
	if err == nil {
		id, rerr := io.ReadAll(io.LimitReader(out.Content, 256))
		out.Content.Close()
		if rerr != nil {
			id = nil
		}
		if id := strings.TrimSpace(string(id)); id != "" {
			return sanitizeStream(id)
		}
	}
	host, herr := os.Hostname()
	if herr != nil || host == "" {
		return "gwlbproxy"
	}
	return sanitizeStream(host)
}

func sanitizeStream(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == ':' || r == '*' {
			return '_'
		}
		return r
	}, s)
	if len(s) > 512 {
		s = s[:512]
	}
	return s
}
