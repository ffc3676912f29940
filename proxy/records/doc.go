// Package records owns the access records: the schema every flow and
// request is written as (one JSON object per line, the fields Logs Insights
// queries read), the Writer that hands them to their sinks without ever
// blocking a relay, the Shipper interface that cwlogs implements, and the
// catalog of Logs Insights queries over those fields. A change to a field
// and to the queries that read it happen here together.
package records
