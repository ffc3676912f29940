package main

// The admin listener: what a GWLB's API and metrics would show and do,
// over plain HTTP for tests and demos. It has no authentication: bind it
// to a loopback or test-only address.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// simStats is what /stats serves and what gwlbsim prints on exit: the
// simulator's counters, the target group's settings and targets, and the
// TUN pump's counters. Field names are stable; tests and scripts parse them.
type simStats struct {
	gwlbsim.Stats
	Stickiness  gwlbsim.Stickiness    `json:"stickiness"`
	Attributes  attributesJSON        `json:"attributes"`
	HealthCheck *healthCheckJSON      `json:"health_check,omitempty"`
	Targets     []gwlbsim.TargetStats `json:"targets"`
	TUN         pumpStats             `json:"tun"`
}

type attributesJSON struct {
	OnUnhealthy         gwlbsim.Failover `json:"on_unhealthy"`
	OnDeregistration    gwlbsim.Failover `json:"on_deregistration"`
	DeregistrationDelay string           `json:"deregistration_delay"`
}

type healthCheckJSON struct {
	Port               int    `json:"port"`
	Path               string `json:"path"`
	Interval           string `json:"interval"`
	Timeout            string `json:"timeout"`
	HealthyThreshold   int    `json:"healthy_threshold"`
	UnhealthyThreshold int    `json:"unhealthy_threshold"`
}

func attrsJSON(a gwlbsim.Attributes) attributesJSON {
	return attributesJSON{OnUnhealthy: a.OnUnhealthy, OnDeregistration: a.OnDeregistration, DeregistrationDelay: a.DeregistrationDelay.String()}
}

func collectStats(sim *gwlbsim.Sim, p *pump) simStats {
	cfg := sim.Config()
	st := simStats{
		Stats: sim.Stats(), Stickiness: cfg.Stickiness, Attributes: attrsJSON(sim.Attributes()),
		Targets: sim.Targets(), TUN: p.stats(),
	}
	if h := cfg.HealthCheck; h.Port != 0 {
		st.HealthCheck = &healthCheckJSON{
			Port: h.Port, Path: h.Path, Interval: h.Interval.String(), Timeout: h.Timeout.String(),
			HealthyThreshold: h.HealthyThreshold, UnhealthyThreshold: h.UnhealthyThreshold,
		}
	}
	return st
}

type adminServer struct {
	srv  *http.Server
	done chan struct{}
}

// startAdmin serves the admin handler on addr until close.
func startAdmin(addr string, sim *gwlbsim.Sim, endpoint uint64, p *pump) (*adminServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--admin-addr: %w", err)
	}
	a := &adminServer{
		srv:  &http.Server{Handler: adminHandler(sim, endpoint, p), ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("gwlbsim: admin listener", "err", err)
		}
	}()
	slog.Info("gwlbsim admin listener", "addr", ln.Addr())
	return a, nil
}

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if a.srv.Shutdown(ctx) != nil {
		a.srv.Close()
	}
	<-a.done
}

func adminHandler(sim *gwlbsim.Sim, endpoint uint64, p *pump) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, collectStats(sim, p))
	})
	mux.HandleFunc("GET /flows", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, sim.Flows())
	})
	mux.HandleFunc("GET /route", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		proto, err := parseProto(q.Get("proto"))
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		src, err1 := netip.ParseAddrPort(q.Get("src"))
		dst, err2 := netip.ParseAddrPort(q.Get("dst"))
		if err := errors.Join(err1, err2); err != nil {
			httpError(w, http.StatusBadRequest, fmt.Errorf("src and dst: want IP:PORT: %w", err))
			return
		}
		type route struct {
			Src      netip.AddrPort `json:"src"`
			Target   netip.AddrPort `json:"target,omitzero"`
			Existing bool           `json:"existing"`
			Dropped  bool           `json:"dropped,omitempty"`
		}
		one := func(src netip.AddrPort) route {
			to, existing, ok := sim.Route(endpoint, proto, src, dst)
			return route{src, to, existing, !ok}
		}
		if q.Get("count") == "" {
			writeJSON(w, http.StatusOK, one(src))
			return
		}
		// count=N: the routes of N source ports from src's, for a test
		// looking for ports whose flows go to a given target.
		n, err := strconv.Atoi(q.Get("count"))
		if err != nil || n < 1 || n > 4096 || int(src.Port())+n > 65536 {
			httpError(w, http.StatusBadRequest, fmt.Errorf("count %q: want 1-4096 ports, within 65535", q.Get("count")))
			return
		}
		routes := make([]route, 0, n)
		for i := range n {
			routes = append(routes, one(netip.AddrPortFrom(src.Addr(), src.Port()+uint16(i))))
		}
		writeJSON(w, http.StatusOK, routes)
	})
	mux.HandleFunc("GET /attributes", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, attrsJSON(sim.Attributes()))
	})
	mux.HandleFunc("POST /attributes", func(w http.ResponseWriter, r *http.Request) {
		a := sim.Attributes()
		q := r.URL.Query()
		var errs []error
		for name, v := range q {
			switch name {
			case "on_unhealthy":
				f, err := gwlbsim.ParseFailover(v[0])
				errs, a.OnUnhealthy = append(errs, err), f
			case "on_deregistration":
				f, err := gwlbsim.ParseFailover(v[0])
				errs, a.OnDeregistration = append(errs, err), f
			case "deregistration_delay":
				d, err := time.ParseDuration(v[0])
				if err == nil && (d < 0 || d > time.Hour) {
					err = fmt.Errorf("deregistration_delay %s: want 0s-3600s", d)
				}
				errs, a.DeregistrationDelay = append(errs, err), d
			default:
				errs = append(errs, fmt.Errorf("unknown attribute %q", name))
			}
		}
		if err := errors.Join(errs...); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		if err := sim.SetAttributes(a); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		slog.Info("gwlbsim: attributes changed", "on_unhealthy", a.OnUnhealthy, "on_deregistration", a.OnDeregistration,
			"deregistration_delay", a.DeregistrationDelay)
		writeJSON(w, http.StatusOK, attrsJSON(a))
	})
	for _, op := range []struct {
		path string
		fn   func(netip.AddrPort) error
	}{{"/register", sim.Register}, {"/deregister", sim.Deregister}} {
		mux.HandleFunc("POST "+op.path, func(w http.ResponseWriter, r *http.Request) {
			a, err := parseTargetParam(r.URL.Query().Get("target"))
			if err != nil {
				httpError(w, http.StatusBadRequest, err)
				return
			}
			switch err := op.fn(a); {
			case errors.Is(err, gwlbsim.ErrUnknownTarget):
				httpError(w, http.StatusNotFound, err)
				return
			case errors.Is(err, gwlbsim.ErrTargetState):
				httpError(w, http.StatusConflict, err)
				return
			case err != nil:
				httpError(w, http.StatusBadRequest, err)
				return
			}
			for _, t := range sim.Targets() {
				if t.Addr == a || (a.Port() == 0 && t.Addr.Addr() == a.Addr()) {
					writeJSON(w, http.StatusOK, t)
					return
				}
			}
			writeJSON(w, http.StatusOK, nil)
		})
	}
	return mux
}

// parseTargetParam reads IP or IP:PORT; without a port, the target is
// named by its address.
func parseTargetParam(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("target %q: want IP or IP:PORT", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

func parseProto(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "icmp":
		return 1, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("proto %q: want tcp, udp, icmp or a number", s)
	}
	return uint8(n), nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
