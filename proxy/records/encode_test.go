package records

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"
)

// fullRecord has every field set, with the strings encoding/json escapes.
func fullRecord() Record {
	return Record{
		Time:            time.Date(2026, 12, 4, 23, 59, 58, 123456789, time.UTC),
		Kind:            "http",
		Action:          "bump",
		Rule:            `rule "quoted" \ back`,
		Policy:          "0123456789ab",
		Endpoint:        "vpce-0123456789abcdef0",
		Attachment:      "0a1b2c3d4e5f6071",
		FlowCookie:      "c00c1e01",
		ClientIP:        "10.0.0.5",
		ClientPort:      51234,
		DestIP:          "2001:db8::1",
		DestPort:        443,
		BytesOut:        1 << 40,
		BytesIn:         -1,
		BytesOutUnacked: 3,
		DurationMS:      12.345,
		Result:          "ok",
		Error:           "tls: <bad> & \"worse\"\n\t\r\b\f\x00\x1f\x7f",
		DestCheck:       "mismatch",
		Truncated:       true,
		Packets:         7,
		SNI:             "ex\u2028ample.com\u2029",
		ALPN:            "h2",
		TLSVersion:      "TLS 1.3",
		TLSCipher:       "TLS_AES_128_GCM_SHA256",
		UpstreamVerify:  "ok",
		ECH:             true,
		Method:          "GET",
		Scheme:          "https",
		Host:            "例え.jp",
		Path:            "/a\xffb\xc3",
		Status:          200,
		UserAgent:       "curl/8 😀",
		WebSocket:       true,
		QueryName:       "example.com.",
		QueryType:       "AAAA",
		RCode:           "NOERROR",
	}
}

func encodingJSON(t testing.TB, r *Record) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	err := json.NewEncoder(&buf).Encode(r) // as the Writer encoded records before
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), err
}

// appendRecord writes what encoding/json wrote, byte for byte: for every
// field set, for none (each omitempty field left out), and for the floats
// encoding/json writes with an exponent.
func TestAppendRecordIsEncodingJSON(t *testing.T) {
	full := fullRecord()
	v := reflect.ValueOf(full)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fullRecord leaves %s unset: a field appendRecord may not write", v.Type().Field(i).Name)
		}
	}
	cases := map[string]Record{"full": full, "empty": {}}
	for _, d := range []float64{0, math.Copysign(0, -1), 1e-6, 9.99e-7, 1e-7, 1.5e-300, 1e20, 1e21, 123456789012345678901234.0, -1e-9, 0.001} {
		r := full
		r.DurationMS = d
		cases[durationCase(d)] = r
	}
	for name, r := range cases {
		want, err := encodingJSON(t, &r)
		if err != nil {
			t.Fatalf("%s: encoding/json: %v", name, err)
		}
		got, err := appendRecord(nil, &r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s:\n got %s (%v)\nwant %s", name, got, err, want)
		}
	}
}

// durationCase names a case by its duration as encoding/json writes it.
func durationCase(f float64) string { b, _ := json.Marshal(f); return "duration " + string(b) }

// Where encoding/json fails, appendRecord fails too: a time it cannot
// write in RFC 3339, a duration that is not a number.
func TestAppendRecordFailsAsEncodingJSON(t *testing.T) {
	for name, r := range map[string]Record{
		"year 10000": {Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"year -1":    {Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
		"NaN":        {DurationMS: math.NaN()},
		"+Inf":       {DurationMS: math.Inf(1)},
	} {
		if _, err := encodingJSON(t, &r); err == nil {
			t.Fatalf("%s: encoding/json took it", name)
		}
		if b, err := appendRecord(nil, &r); err == nil {
			t.Fatalf("%s: appendRecord wrote %s", name, b)
		}
	}
}

// FuzzAppendRecord holds appendRecord to encoding/json for any strings
// (the fields a client or a destination controls: SNI, host, path, user
// agent, query name, error text), numbers, flags and times.
func FuzzAppendRecord(f *testing.F) {
	r := fullRecord()
	f.Add(r.Error, r.SNI, r.Path, r.UserAgent, int64(r.BytesOut), r.DurationMS, uint16(443), 200, r.Time.UnixNano(), true)
	f.Add("", "", "", "", int64(0), 0.0, uint16(0), 0, int64(0), false)
	f.Fuzz(func(t *testing.T, s1, s2, s3, s4 string, n int64, d float64, port uint16, status int, nanos int64, flag bool) {
		r := fullRecord()
		r.Time = time.Unix(0, nanos).UTC()
		r.Kind, r.Rule, r.Error = s1, s2, s3
		r.SNI, r.Host, r.Path, r.UserAgent, r.QueryName = s4, s1, s2, s3+s4, s4
		r.Method = ""
		r.ClientPort, r.DestPort, r.Status = port, port/2, status
		r.BytesOut, r.BytesIn, r.Packets, r.BytesOutUnacked = n, -n, n/3, n/5
		r.DurationMS = d
		r.Truncated, r.ECH, r.WebSocket = flag, !flag, flag
		want, werr := encodingJSON(t, &r)
		got, gerr := appendRecord(nil, &r)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("encoding/json error %v, appendRecord error %v", werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
	})
}

// BenchmarkEncodeRecord compares a kept-alive request's record through
// encoding/json and through appendRecord.
func BenchmarkEncodeRecord(b *testing.B) {
	r := Record{
		Time: time.Now().UTC(), Kind: "http", Action: "bump", Rule: "default",
		Endpoint: "vpce-0123456789abcdef0", Attachment: "0a1b2c3d4e5f6071", FlowCookie: "c00c1e01",
		ClientIP: "10.0.0.5", ClientPort: 51234, DestIP: "192.0.2.10", DestPort: 443,
		BytesOut: 120, BytesIn: 4096, DurationMS: 1.234, Result: "ok",
		SNI: "www.example.com", ALPN: "http/1.1", TLSVersion: "TLS 1.3", TLSCipher: "TLS_AES_128_GCM_SHA256",
		UpstreamVerify: "ok", Method: "GET", Scheme: "https", Host: "www.example.com", Path: "/index.html",
		Status: 200, UserAgent: "curl/8.5.0",
	}
	b.Run("encoding-json", func(b *testing.B) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			if err := enc.Encode(&r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendRecord", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = appendRecord(buf[:0], &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
