package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"time"
)

// transfer is what one iperf3 test carried.
type transfer struct {
	bytes       int64
	seconds     float64
	retransmits int64
}

func (t transfer) gbps() float64 {
	if t.seconds <= 0 {
		return 0
	}
	return float64(t.bytes) * 8 / t.seconds / 1e9
}

// iperfReport is the part of iperf3 -J's report the rig reads.
type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Bytes       int64   `json:"bytes"`
			Seconds     float64 `json:"seconds"`
			Retransmits int64   `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes   int64   `json:"bytes"`
			Seconds float64 `json:"seconds"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf runs one iperf3 client test in the client namespace, from the
// client's address: flows parallel streams, the server sending if reverse.
// What counts is what the receiving side got.
func (r *rig) iperf(ctx context.Context, flows int, reverse bool) (transfer, error) {
	ctx, cancel := context.WithTimeout(ctx, r.o.duration+30*time.Second)
	defer cancel()
	args := []string{"netns", "exec", r.tp.client, r.o.iperf3, "-c", srvAddr, "-B", clientAddr,
		"-t", strconv.Itoa(int(r.o.duration.Seconds())), "-P", strconv.Itoa(flows), "-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var rep iperfReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return transfer{}, fmt.Errorf("iperf3: %v, report unreadable (%v): %s %s", runErr, err, stdout.Bytes(), stderr.Bytes())
	}
	if rep.Error != "" || runErr != nil {
		return transfer{}, fmt.Errorf("iperf3: %v: %s %s", runErr, rep.Error, stderr.Bytes())
	}
	t := transfer{bytes: rep.End.SumReceived.Bytes, seconds: rep.End.SumReceived.Seconds, retransmits: rep.End.SumSent.Retransmits}
	if t.bytes <= 0 {
		return transfer{}, fmt.Errorf("iperf3 carried nothing: %s", stdout.Bytes())
	}
	return t, nil
}

// result is one test: kernel routing and the appliance, back to back.
type result struct {
	run, flows        int
	reverse           bool
	kernel, appliance transfer
	appCPU, simCPU    float64 // CPU seconds during the appliance's test, NAPI threads included
	// appRxCPU is the part of appCPU that was its namespace's NAPI
	// threads, when napi is set (simCPU holds its namespace's too).
	appRxCPU float64
	napi     bool
}

func (r result) name() string {
	dir := "client sends"
	if r.reverse {
		dir = "server sends"
	}
	s := "s"
	if r.flows == 1 {
		s = ""
	}
	return fmt.Sprintf("%d flow%s, %s", r.flows, s, dir)
}

const gib = 1 << 30

func (r result) ratio() float64 { return r.appliance.gbps() / r.kernel.gbps() }
func (r result) appPerGiB() float64 {
	return r.appCPU / (float64(r.appliance.bytes) / gib)
}
func (r result) simPerGiB() float64 {
	return r.simCPU / (float64(r.appliance.bytes) / gib)
}
func (r result) appRxPerGiB() float64 {
	return r.appRxCPU / (float64(r.appliance.bytes) / gib)
}

func printResult(w io.Writer, r result) {
	rx := ""
	if r.napi {
		rx = fmt.Sprintf(" (receive threads %.2f)", r.appRxPerGiB())
	}
	fmt.Fprintf(w, "run %d  %-20s kernel %6.2f Gbit/s  appliance %6.2f Gbit/s (%.2f×, %d retransmits)  appliance %.2f CPU-s/GiB%s  gwlbsim %.2f CPU-s/GiB\n",
		r.run, r.name(), r.kernel.gbps(), r.appliance.gbps(), r.ratio(), r.appliance.retransmits, r.appPerGiB(), rx, r.simPerGiB())
}

// printSummary prints one row per test, with the range over the runs.
func printSummary(w io.Writer, rs []result) {
	type key struct {
		flows   int
		reverse bool
	}
	var order []key
	by := map[key][]result{}
	for _, r := range rs {
		k := key{r.flows, r.reverse}
		if by[k] == nil {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
	}
	fmt.Fprintln(w)
	napi := len(rs) > 0 && rs[0].napi
	if napi {
		fmt.Fprintln(w, "| test | kernel Gbit/s | appliance Gbit/s | appliance/kernel | appliance CPU-s/GiB | of which receive threads | gwlbsim CPU-s/GiB |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	} else {
		fmt.Fprintln(w, "| test | kernel Gbit/s | appliance Gbit/s | appliance/kernel | appliance CPU-s/GiB | gwlbsim CPU-s/GiB |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	}
	for _, k := range order {
		g := by[k]
		col := func(f func(result) float64) string {
			lo, hi := f(g[0]), f(g[0])
			for _, r := range g[1:] {
				lo, hi = min(lo, f(r)), max(hi, f(r))
			}
			if fmt.Sprintf("%.2f", lo) == fmt.Sprintf("%.2f", hi) {
				return fmt.Sprintf("%.2f", lo)
			}
			return fmt.Sprintf("%.2f–%.2f", lo, hi)
		}
		rx := ""
		if napi {
			rx = col(result.appRxPerGiB) + " | "
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s%s |\n", g[0].name(),
			col(func(r result) float64 { return r.kernel.gbps() }), col(func(r result) float64 { return r.appliance.gbps() }),
			col(result.ratio), col(result.appPerGiB), rx, col(result.simPerGiB))
	}
	fmt.Fprintf(w, "(%d run(s) each; ranges are min–max)\n", len(by[order[0]]))
}

// printAloneSummary prints gwlbsim's figures with the shim, ranges over
// the runs.
func printAloneSummary(w io.Writer, rs []result) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| gwlbsim alone (shim) | Gbit/s | gwlbsim CPU-s/GiB | shim CPU-s/GiB |")
	fmt.Fprintln(w, "| --- | --- | --- | --- |")
	seen := map[string]bool{}
	for _, r0 := range rs {
		if seen[r0.name()] {
			continue
		}
		seen[r0.name()] = true
		var g []result
		for _, r := range rs {
			if r.name() == r0.name() {
				g = append(g, r)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r0.name(), span(g, func(r result) float64 { return r.appliance.gbps() }),
			span(g, result.simPerGiB), span(g, result.appPerGiB))
	}
}

// span is "lo–hi" of f over g, or one figure when they agree.
func span(g []result, f func(result) float64) string {
	lo, hi := f(g[0]), f(g[0])
	for _, r := range g[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	if fmt.Sprintf("%.2f", lo) == fmt.Sprintf("%.2f", hi) {
		return fmt.Sprintf("%.2f", lo)
	}
	return fmt.Sprintf("%.2f–%.2f", lo, hi)
}

func numCPU() int { return runtime.NumCPU() }
