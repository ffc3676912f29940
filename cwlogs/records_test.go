package cwlogs_test

import (
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The Shipper is what the record writer ships through; this fails to
// compile if the two drift apart.
var _ records.Shipper = (*cwlogs.Shipper)(nil)
