package records_test

import (
	"testing"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestMaxLineIsCloudWatchs: the Writer's default line limit is the longest
// message the CloudWatch shipper sends whole, so a record never reaches its
// cut, which would leave a line Logs Insights cannot parse.
func TestMaxLineIsCloudWatchs(t *testing.T) {
	if records.DefaultMaxLineBytes != cwlogs.MaxMessageBytes {
		t.Fatalf("DefaultMaxLineBytes %d, cwlogs.MaxMessageBytes %d", records.DefaultMaxLineBytes, cwlogs.MaxMessageBytes)
	}
}
