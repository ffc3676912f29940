package cwlogs

import (
	"fmt"
	"net/http"
	"strings"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// A 2xx answer to PutLogEvents counts its batch shipped only when it is the
// service's: the SDK takes an empty body, a 204 or a bare {} for a success,
// so an intermediary that answers PutLogEvents itself (a TLS-inspecting
// proxy's page, an API Gateway or a function URL behind a wrong
// --cwlogs-endpoint) had records counted shipped that nothing stored,
// silently. CloudWatch Logs answers every call with its request ID
// (x-amzn-RequestId) and its JSON (application/x-amz-json-1.1); an API
// Gateway adds a request ID of its own, but not that content type.

// notServiceError is a 2xx answer to PutLogEvents that is not the
// service's: its batch is counted refused, not shipped (classify).
type notServiceError struct {
	status      int
	requestID   string
	contentType string
}

func (e *notServiceError) Error() string {
	return fmt.Sprintf("a %d answer that is not CloudWatch Logs' own (request ID %q, Content-Type %q): an intermediary's, or a wrong endpoint's; nothing says the service stored the batch", e.status, e.requestID, e.contentType)
}

// serviceAnswer reports whether an answer with requestID and header is
// the service's own.
func serviceAnswer(requestID string, header http.Header) bool {
	return requestID != "" && strings.HasPrefix(header.Get("Content-Type"), "application/x-amz-json")
}

// checkServiceSuccess returns nil when out, a PutLogEvents success, is the
// service's answer, and a notServiceError when it is not.
func checkServiceSuccess(out *cloudwatchlogs.PutLogEventsOutput) error {
	id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata)
	raw, ok := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
	if !ok || raw == nil || raw.Response == nil {
		return &notServiceError{requestID: id}
	}
	if serviceAnswer(id, raw.Header) {
		return nil
	}
	return &notServiceError{status: raw.StatusCode, requestID: id, contentType: raw.Header.Get("Content-Type")}
}
