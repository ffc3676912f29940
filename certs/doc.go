// Package certs owns gwlbproxy's interception CA: creating it, loading it
// from files or AWS Secrets Manager, minting short-lived leaf certificates
// for bumped TLS connections, and handing the CA certificate to the clients
// that must trust it.
//
// The pieces:
//
//   - CA (ca.go): an ECDSA P-256 self-signed CA made by Generate, or a CA (and
//     optionally its issuers) read by Load. LoadOrCreate keeps one in a state
//     directory across restarts. Parse and ParseBundle apply Load's checks to
//     PEM from anywhere.
//   - LoadSecret (secret.go): the CA from an AWS Secrets Manager secret
//     holding the PEM bundle, so that every instance of an Auto Scaling group
//     presents the same CA. certs/secretstest is a local Secrets Manager
//     endpoint for tests.
//   - Minter (leaf.go, cache.go): leaf certificates per name from a bounded LRU
//     cache, with concurrent requests for one name collapsed into one mint:
//     Leaf for one name or IP address (a ClientHello's SNI, or the destination
//     address of a client that sent none), LeafFor for a set of names and
//     addresses.
//   - Trust distribution (trust.go): an http.Handler serving a page with
//     install steps per platform plus the certificate as PEM and DER, and
//     WriteTrustCommands for the same steps on a terminal.
//
// The package never logs secrets: only names, fingerprints and durations.
package certs
