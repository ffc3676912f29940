// Package destchecktest is a small authoritative DNS server for tests: it
// answers A and AAAA queries from a table the test sets, over UDP and TCP on
// one loopback port, follows CNAMEs within its table, and can be told to
// truncate, delay, stay silent or fail, and counts what it was asked.
package destchecktest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Record is what the server knows of one name.
type Record struct {
	// Addrs are the name's addresses: IPv4 ones answer A queries, IPv6
	// ones AAAA queries.
	Addrs []netip.Addr
	// CNAME, when set, makes the name an alias of CNAME (Addrs are then
	// ignored).
	CNAME string
	// TTL of the records (default 60).
	TTL uint32
	// RCode, when not success, is the answer to any query for the name
	// (SERVFAIL, REFUSED...).
	RCode dnsmessage.RCode
}

// Server answers DNS queries from its table. Names it does not know get
// NXDOMAIN; known names without an address of the asked type get an empty
// NOERROR (NODATA).
type Server struct {
	pc   net.PacketConn
	ln   net.Listener
	addr netip.AddrPort
	wg   sync.WaitGroup

	closeOnce sync.Once

	mu       sync.Mutex
	zone     map[string]Record
	truncate bool          // UDP answers carry TC and no records
	delay    time.Duration // before each answer
	silent   bool          // no answer at all
	drop     int           // UDP queries still to drop unanswered
	held     chan struct{} // answers wait until it is closed (Hold)
	closing  chan struct{} // closed by Close: held answers are given up
	queries  map[string]int
	udp, tcp int
}

// Start listens on UDP and TCP on the same free port of addr (a loopback
// address, or one inside a test's namespace).
func Start(addr netip.Addr) (*Server, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil { // the port is taken for TCP: try another
			pc.Close()
			lastErr = err
			continue
		}
		return serve(pc, ln), nil
	}
	return nil, fmt.Errorf("no port free for both UDP and TCP on %s: %w", addr, lastErr)
}

// Listen is Start on a given port, such as 53 (which needs root or
// CAP_NET_BIND_SERVICE).
func Listen(ap netip.AddrPort) (*Server, error) {
	pc, err := net.ListenPacket("udp", ap.String())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, err
	}
	return serve(pc, ln), nil
}

func serve(pc net.PacketConn, ln net.Listener) *Server {
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	s := &Server{pc: pc, ln: ln, addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), zone: map[string]Record{}, queries: map[string]int{}, closing: make(chan struct{})}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	return s
}

// Addr returns the address and port the server answers on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Close stops the server and waits for it.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
	s.pc.Close()
	s.ln.Close()
	s.wg.Wait()
}

func canonical(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// Set makes the server answer name (a "*.parent" name answers every name
// below parent that has no entry of its own) with addrs and ttl.
func (s *Server) Set(name string, ttl uint32, addrs ...netip.Addr) {
	s.SetRecord(name, Record{Addrs: addrs, TTL: ttl})
}

// SetCNAME makes name an alias of target.
func (s *Server) SetCNAME(name, target string, ttl uint32) {
	s.SetRecord(name, Record{CNAME: target, TTL: ttl})
}

// SetRecord sets what the server knows of name.
func (s *Server) SetRecord(name string, r Record) {
	if r.TTL == 0 {
		r.TTL = 60
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zone[canonical(name)] = r
}

// Delete forgets name: it gets NXDOMAIN again.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.zone, canonical(name))
}

// SetTruncate makes every UDP answer come back truncated (TC set, no
// records), so that clients must ask again over TCP.
func (s *Server) SetTruncate(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncate = on
}

// SetDelay delays every answer by d.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetSilent makes the server read queries and answer none.
func (s *Server) SetSilent(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent = on
}

// Hold keeps every answer back until release is called (or the server
// closes): a resolver that is as slow as a test needs, with no clock in
// it. Queries tells when a query has come. Release more than once is a
// no-op.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.held = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.held == ch {
				s.held = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// DropNext makes the server drop the next n queries over UDP unanswered,
// as a lossy network would.
func (s *Server) DropNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop = n
}

// Queries returns how many queries for name (any type, any case) arrived,
// over UDP and TCP; "" counts every query.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" {
		return s.udp + s.tcp
	}
	return s.queries[canonical(name)]
}

// TCPQueries returns how many queries arrived over TCP.
func (s *Server) TCPQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcp
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		q := append([]byte(nil), buf[:n]...)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if resp := s.answer(q, true); resp != nil {
				_, _ = s.pc.WriteTo(resp, from)
			}
		}()
	}
}

func (s *Server) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			var hdr [2]byte
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := s.answer(q, false)
				if resp == nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer returns the response to query q, or nil for none.
func (s *Server) answer(q []byte, udp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	s.mu.Lock()
	if udp {
		s.udp++
	} else {
		s.tcp++
	}
	s.queries[canonical(question.Name.String())]++
	delay, silent, truncate, held := s.delay, s.silent, s.truncate && udp, s.held
	if udp && s.drop > 0 {
		s.drop--
		silent = true
	}
	s.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if held != nil {
		select {
		case <-held:
		case <-s.closing:
			return nil
		}
	}
	if silent {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if truncate {
		rh.Truncated = true
		return build(rh, question, nil)
	}
	var answers []dnsmessage.Resource
	owner := question.Name
	for range 8 {
		rec, ok := s.lookup(owner.String())
		if !ok {
			if len(answers) == 0 {
				rh.RCode = dnsmessage.RCodeNameError
			}
			break
		}
		if rec.RCode != dnsmessage.RCodeSuccess {
			rh.RCode, answers = rec.RCode, nil
			break
		}
		hdr := dnsmessage.ResourceHeader{Name: owner, Class: dnsmessage.ClassINET, TTL: rec.TTL}
		if rec.CNAME != "" {
			target, err := dnsmessage.NewName(canonical(rec.CNAME) + ".")
			if err != nil {
				break
			}
			hdr.Type = dnsmessage.TypeCNAME
			answers = append(answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.CNAMEResource{CNAME: target}})
			owner = target
			continue
		}
		for _, a := range rec.Addrs {
			switch {
			case a.Is4() && question.Type == dnsmessage.TypeA:
				hdr.Type = dnsmessage.TypeA
				answers = append(answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: a.As4()}})
			case a.Is6() && question.Type == dnsmessage.TypeAAAA:
				hdr.Type = dnsmessage.TypeAAAA
				answers = append(answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
			}
		}
		break
	}
	return build(rh, question, answers)
}

func (s *Server) lookup(name string) (Record, bool) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.zone[name]; ok {
		return r, true
	}
	for rest := name; ; {
		_, parent, ok := strings.Cut(rest, ".")
		if !ok {
			return Record{}, false
		}
		if r, ok := s.zone["*."+parent]; ok {
			return r, true
		}
		rest = parent
	}
}

func build(h dnsmessage.Header, q dnsmessage.Question, answers []dnsmessage.Resource) []byte {
	m := dnsmessage.Message{Header: h, Questions: []dnsmessage.Question{q}, Answers: answers}
	b, err := m.Pack()
	if err != nil {
		panic(errors.Join(errors.New("destchecktest: packing a response"), err))
	}
	return b
}
