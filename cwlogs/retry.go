package cwlogs

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
)

// apiError is what the SDK's modelled and generic API errors implement
// (smithy.APIError: the part of it classify uses).
type apiError interface {
	error
	ErrorCode() string
}

// errClass is what the shipper does after a failed call.
type errClass int

const (
	// classRetry: transient (throttling, 5xx, network, credentials); the
	// same batch is sent again after a backoff.
	classRetry errClass = iota
	// classMissing: the group or stream is gone; recreate it, then retry.
	classMissing
	// classPermanent: the service refused the request as invalid; retrying
	// cannot help.
	classPermanent
	// classAccepted: the service already holds the batch
	// (DataAlreadyAcceptedException), or said it took it (a 2xx whose
	// body could not be read): its records are shipped.
	classAccepted
)

func (c errClass) String() string {
	switch c {
	case classRetry:
		return "retry"
	case classMissing:
		return "missing"
	case classAccepted:
		return "accepted"
	}
	return "permanent"
}

// retryCodes are error codes worth retrying besides the SDK's throttling and
// transient lists. Authorization failures are here on purpose: an IAM policy
// or an expired session is fixed by an operator while the buffer holds the
// records, whereas giving up would lose every record until then.
// OperationAbortedException is a conflict with a concurrent change to the
// same resource (several appliances creating one log group at once, or
// setting its retention): the next attempt finds the other's result.
var retryCodes = map[string]bool{
	"OperationAbortedException":   true,
	"ServiceUnavailableException": true,
	"ServiceUnavailable":          true,
	"InternalFailure":             true,
	"InternalServerError":         true,
	"InternalServerException":     true,
	"AccessDeniedException":       true,
	"UnrecognizedClientException": true,
	"ExpiredTokenException":       true,
	"ExpiredToken":                true,
	"InvalidSignatureException":   true, // clock skew, corrected on the next attempt
	"SignatureDoesNotMatch":       true,
	// PutLogEvents no longer checks sequence tokens, and the shipper sends
	// none, but the SDK still models the error: were it ever answered, the
	// same batch sent again is what the service asked for, not an invalid
	// request whose records are lost.
	"InvalidSequenceTokenException": true,
}

// classify decides how to handle err from a CloudWatch Logs call.
func classify(err error) errClass {
	if _, ok := errors.AsType[*notServiceError](err); ok {
		return classPermanent
	}
	var apiErr apiError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		switch code {
		case "ResourceNotFoundException":
			return classMissing
		case "DataAlreadyAcceptedException":
			// The service has stored this batch already (a sequence token
			// reused after an answer that never arrived, in the API's older
			// form): counting it as failed would report stored records lost.
			return classAccepted
		}
		if _, ok := retry.DefaultThrottleErrorCodes[code]; ok {
			return classRetry
		}
		if _, ok := retry.DefaultRetryableErrorCodes[code]; ok {
			return classRetry
		}
		if retryCodes[code] {
			return classRetry
		}
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) {
		switch st := respErr.HTTPStatusCode(); {
		case st >= 200 && st < 300 && respErr.Response != nil && serviceAnswer(respErr.ServiceRequestID(), respErr.Response.Header):
			// The service took the batch (its request ID and its JSON's
			// content type say the answer is its own); only the answer's
			// body was cut (a reset, the call's timeout after the
			// headers) or mangled on the way. Counted as refused, stored
			// records were reported lost, and a loss report it carried
			// was sent again: counted twice. Any other 2xx is no answer
			// of the service's (an intermediary's page): refused, below
			// (serviceanswer.go).
			return classAccepted
		case st == 0, st >= 500, st == 429:
			// Status 0: no answer was read (connection refused or
			// reset, DNS, TLS, timeout).
			return classRetry
		}
		return classPermanent
	}
	// No HTTP response at all: connection refused or reset, DNS, a timeout,
	// or credentials that could not be fetched. All may pass.
	return classRetry
}

// isCode reports whether err is an API error with the given code.
func isCode(err error, code string) bool {
	var apiErr apiError
	return errors.As(err, &apiErr) && apiErr.ErrorCode() == code
}

// noSDKRetries makes one call a single attempt: the shipper owns the backoff
// (so it is bounded, measurable and keeps retrying past the SDK's three
// attempts), and the SDK's client-side retry quota cannot starve it.
func noSDKRetries(o *cloudwatchlogs.Options) {
	o.Retryer = aws.NopRetryer{}
}

// backoff returns the wait before retry number attempt (0 for the first
// retry): exponential from min, capped at max, with "equal jitter" (a value
// drawn from [d/2, d]) so that many appliances recovering from the same
// outage spread out while each wait stays predictable within a factor of two.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := hi
	if attempt < 32 {
		if v := lo << attempt; v > 0 && v < hi {
			d = v
		}
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleep waits for d or until ctx is done; it reports whether the full wait
// elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Once Close has begun, a call may take half the time Close has left, but
// at least closingCallMin and at most closingCallMax (and RequestTimeout).
// A call stuck on a dead connection (its answer never comes) would
// otherwise hold the last records until Close gives up on them all, when a
// fresh attempt on a new connection would go through; half leaves the other
// half for that attempt. A shorter call could hardly succeed, and Close's
// deadline ends it anyway.
const (
	closingCallMin = 500 * time.Millisecond
	closingCallMax = 5 * time.Second
)

// callContext returns the context for one API call: it ends with the
// Shipper, after RequestTimeout, and once Close has begun after
// closingCallTimeout, also for a call already under way when Close begins.
// The caller must call cancel when the call returns.
func (s *Shipper) callContext() (context.Context, context.CancelFunc) {
	select {
	case <-s.closing:
		return context.WithTimeout(s.runCtx, min(s.cfg.RequestTimeout, s.closingCallTimeout()))
	default:
	}
	ctx, cancel := context.WithTimeout(s.runCtx, s.cfg.RequestTimeout)
	go func() {
		select {
		case <-s.closing:
		case <-ctx.Done():
			return
		}
		t := time.NewTimer(s.closingCallTimeout())
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// closingCallTimeout is how long a call may take from now on, once Close has
// begun.
func (s *Shipper) closingCallTimeout() time.Duration {
	s.mu.Lock()
	deadline := s.closeDeadline
	s.mu.Unlock()
	d := closingCallMax
	if !deadline.IsZero() {
		d = min(d, max(time.Until(deadline)/2, closingCallMin))
	}
	return min(d, s.cfg.RequestTimeout)
}

// closingRetryMax caps the wait between retries once Close has begun: the
// last records have a deadline (the appliance's drain), and throttling, the
// usual cause of a retry, lifts within a second or so.
const closingRetryMax = 500 * time.Millisecond

// retryWait waits before retry number attempt; it reports false when the
// Shipper is shut down meanwhile. Once Close has begun, waits are capped at
// closingRetryMax, and a longer wait under way ends at once.
func (s *Shipper) retryWait(attempt int) bool {
	hi, closing := s.cfg.RetryMax, s.closing
	select {
	case <-s.closing:
		hi, closing = min(hi, closingRetryMax), nil
	default:
	}
	t := time.NewTimer(backoff(attempt, s.cfg.RetryMin, hi))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-closing:
		return s.runCtx.Err() == nil
	case <-s.runCtx.Done():
		return false
	}
}
