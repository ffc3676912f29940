package destcheck

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// An answer over TCP (after a truncated one over UDP) that answers another
// question than the one asked is not the answer: its addresses must not
// vouch for the name asked. (Kills the mutant that drops exchangeTCP's
// matches check; TestLookupIgnoresMismatchedAnswers holds it over UDP only.)
func TestTCPAnswerToAnotherQuestion(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Skip("TCP port taken:", err)
	}
	defer ln.Close()
	build := func(id uint16, qname string, qtype dnsmessage.Type, tc bool, a [4]byte) []byte {
		m := dnsmessage.Message{Header: dnsmessage.Header{ID: id, Response: true, Truncated: tc},
			Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(qname), Type: qtype, Class: dnsmessage.ClassINET}}}
		if !tc && qtype == dnsmessage.TypeA {
			m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(qname), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60}, Body: &dnsmessage.AResource{A: a}}}
		}
		b, _ := m.Pack()
		return b
	}
	// Every UDP answer truncated.
	go serveQuestions(pc, func(h dnsmessage.Header, q dnsmessage.Question, reply func([]byte)) {
		reply(build(h.ID, q.Name.String(), q.Type, true, [4]byte{}))
	})
	go func() { // over TCP, the right ID but another name's answer
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [2]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				var p dnsmessage.Parser
				h, err := p.Start(msg)
				if err != nil {
					return
				}
				q, _ := p.Question()
				ans := build(h.ID, "other.test.", q.Type, false, [4]byte{6, 6, 6, 6})
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(ans))), ans...))
			}()
		}
	}()
	c := newTestChecker(t, Config{Resolver: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))}, nil)
	err = check(c, epA, "real.test", "6.6.6.6")
	t.Logf("check: %v", err)
	if err == nil {
		t.Error("6.6.6.6, from a TCP answer to another question (other.test), was accepted for real.test")
	}
}
