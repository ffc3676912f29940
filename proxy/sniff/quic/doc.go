// Package quic reads the TLS server name from a QUIC client's Initial packets
// so that the appliance can decide QUIC flows (HTTP/3 on UDP 443) by name,
// as it does TLS over TCP.
//
// QUIC encrypts even its first packets, but with keys that anyone can derive
// from the packet itself (RFC 9001 §5.2): they are computed from the
// Destination Connection ID with a salt published per version. An on-path
// observer can therefore remove the header and packet protection of a
// client's Initial packets, collect the TLS handshake bytes carried in their
// CRYPTO frames, and parse the ClientHello once it is complete. Modern
// clients send ClientHellos that do not fit in one packet (post-quantum key
// shares alone are over a kilobyte), so the bytes are reassembled by offset
// across packets and datagrams, in whatever order they arrive.
//
// Supported versions are QUIC version 1 (RFC 9000/9001) and version 2
// (RFC 9369), which differs in its salt, key labels and packet type bits.
//
// Nothing here is authenticated in the sense that matters to a policy: any
// host can build Initial packets for any connection ID. What the package
// guarantees is that it reads the same bytes the server will read, and that
// it refuses (rather than guesses) when they are ambiguous, for example when
// two packets carry different data for the same stream offset.
//
// All parsing is bounded: hostile input can neither panic nor make the
// package allocate more than a small multiple of what it was given.
package quic
