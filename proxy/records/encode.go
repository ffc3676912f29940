package records

import (
	"errors"
	"math"
	"strconv"
	"unicode/utf8"
)

// appendRecord appends r as encoding/json would write it (json.Encoder,
// HTML escaped, without the newline): the same bytes, field for field,
// which TestAppendRecordIsEncodingJSON and FuzzAppendRecord hold it to.
// It exists because encoding/json finds its way through the struct by
// reflection for every record, and a kept-alive request's record was a
// thirtieth of the appliance's CPU per request, most of it there. Like
// encoding/json it fails only for a time outside years 0-9999 or with a
// zone offset of a day or more (Writer.Write makes every time UTC), and
// for a duration that is not a number.
func appendRecord(b []byte, r *Record) ([]byte, error) {
	b = append(b, `{"time":"`...)
	var err error
	if b, err = r.Time.AppendText(b); err != nil {
		return b, err
	}
	b = appendStringField(b, `","kind":`, r.Kind)
	b = appendStringField(b, `,"action":`, r.Action)
	b = appendStringField(b, `,"rule":`, r.Rule)
	b = appendOptionalString(b, `,"policy":`, r.Policy)
	b = appendStringField(b, `,"endpoint":`, r.Endpoint)
	b = appendStringField(b, `,"attachment":`, r.Attachment)
	b = appendStringField(b, `,"flow_cookie":`, r.FlowCookie)
	b = appendStringField(b, `,"client_ip":`, r.ClientIP)
	if r.ClientPort != 0 {
		b = strconv.AppendUint(append(b, `,"client_port":`...), uint64(r.ClientPort), 10)
	}
	b = appendStringField(b, `,"dest_ip":`, r.DestIP)
	if r.DestPort != 0 {
		b = strconv.AppendUint(append(b, `,"dest_port":`...), uint64(r.DestPort), 10)
	}
	b = strconv.AppendInt(append(b, `,"bytes_out":`...), r.BytesOut, 10)
	b = strconv.AppendInt(append(b, `,"bytes_in":`...), r.BytesIn, 10)
	if r.BytesOutUnacked != 0 {
		b = strconv.AppendInt(append(b, `,"bytes_out_unacked":`...), r.BytesOutUnacked, 10)
	}
	if b, err = appendFloat(append(b, `,"duration_ms":`...), r.DurationMS); err != nil {
		return b, err
	}
	b = appendStringField(b, `,"result":`, r.Result)
	b = appendOptionalString(b, `,"error":`, r.Error)
	b = appendOptionalString(b, `,"dest_check":`, r.DestCheck)
	if r.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	if r.Packets != 0 {
		b = strconv.AppendInt(append(b, `,"packets":`...), r.Packets, 10)
	}
	b = appendOptionalString(b, `,"sni":`, r.SNI)
	b = appendOptionalString(b, `,"alpn":`, r.ALPN)
	b = appendOptionalString(b, `,"tls_version":`, r.TLSVersion)
	b = appendOptionalString(b, `,"tls_cipher":`, r.TLSCipher)
	b = appendOptionalString(b, `,"upstream_verify":`, r.UpstreamVerify)
	if r.ECH {
		b = append(b, `,"ech":true`...)
	}
	b = appendOptionalString(b, `,"method":`, r.Method)
	b = appendOptionalString(b, `,"scheme":`, r.Scheme)
	b = appendOptionalString(b, `,"host":`, r.Host)
	b = appendOptionalString(b, `,"path":`, r.Path)
	if r.Status != 0 {
		b = strconv.AppendInt(append(b, `,"status":`...), int64(r.Status), 10)
	}
	b = appendOptionalString(b, `,"user_agent":`, r.UserAgent)
	if r.WebSocket {
		b = append(b, `,"websocket":true`...)
	}
	b = appendOptionalString(b, `,"query_name":`, r.QueryName)
	b = appendOptionalString(b, `,"query_type":`, r.QueryType)
	b = appendOptionalString(b, `,"rcode":`, r.RCode)
	return append(b, '}'), nil
}

func appendStringField(b []byte, key, s string) []byte {
	return appendString(append(b, key...), s)
}

// appendOptionalString is appendStringField for an omitempty field.
func appendOptionalString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

const hexDigits = "0123456789abcdef"

// plainASCII tells the ASCII bytes a JSON string holds as they are.
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendString appends s as a JSON string the way encoding/json escapes
// it by default: quotes, backslashes and control characters escaped
// (\b \f \n \r \t short), <, > and & as \u escapes so that no record can
// close an HTML script element it is pasted into, invalid UTF-8 as
// U+FFFD, and U+2028 and U+2029, which end a line in JavaScript, escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plainASCII[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(append(b, s[start:]...), '"')
}

var errNotANumber = errors.New("records: a duration that is not a number")

// appendFloat appends f as encoding/json writes a float64: the shortest
// decimal that reads back as f, in exponent form only below 1e-6 or from
// 1e21 on, with a one-digit negative exponent unpadded.
func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, errNotANumber
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 to e-7, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}
