#!/usr/bin/env bash
# demo.sh: gwlbproxy end to end on one machine, in three network namespaces.
#
#   client ns: curl, dig, ping ─▶ tun0 (198.18.50.2) ─▶ gwlbsim (198.18.1.2)
#   app ns:    gwlbproxy: GENEVE on 198.18.1.1:6081, admin on 198.18.1.1:8080,
#              dials out from 198.18.2.1
#   srv ns:    HTTP :80 and DNS :53 on 198.18.2.3
#
# The client namespace reaches the servers only through its TUN device:
# gwlbsim carries every packet as GENEVE to the appliance, which terminates
# the flows in userspace and re-originates them. Nothing forwards in the
# kernel. Every address lives inside the namespaces, which are deleted on
# exit, whatever happens.
#
# Usage: sudo cmd/gwlbsim/demo.sh [--wait]
#   --wait   keep everything running until Enter, to try commands yourself
set -euo pipefail

if [[ ${EUID} -ne 0 ]]; then
	echo "demo.sh needs root: it creates network namespaces, veth pairs and a TUN device" >&2
	exit 1
fi
for tool in ip curl dig ping sysctl go mkfifo; do
	if ! command -v "$tool" >/dev/null; then
		echo "demo.sh needs $tool (apt-get install iproute2 curl dnsutils iputils-ping procps)" >&2
		exit 1
	fi
done
WAIT=0
[[ ${1:-} == --wait ]] && WAIT=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d -t gwlbdemo.XXXXXX)
SUFFIX=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
CLIENT=gwlbdemo-client-$SUFFIX
APP=gwlbdemo-app-$SUFFIX
SRV=gwlbdemo-srv-$SUFFIX

CLIENT_ADDR=198.18.50.2
SIM_ADDR=198.18.1.2
APPLIANCE_ADDR=198.18.1.1
APP_SRV_ADDR=198.18.2.1
SRV_ADDR=198.18.2.3
ADMIN=http://$APPLIANCE_ADDR:8080

PIDS=()
NAMESPACES=()

# stop_pid sends SIGTERM, waits up to 5 s, then SIGKILLs.
stop_pid() {
	local pid=$1
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		stop_pid "$pid"
	done
	exec 7>&- 2>/dev/null # the servers' stdin: closing it stops them too
	for ns in "${NAMESPACES[@]}"; do
		ip netns del "$ns"
	done
	if [[ $rc -ne 0 ]]; then
		echo "demo failed (exit $rc); logs:" >&2
		for f in "$WORK"/*.log; do
			[[ -s $f ]] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }
		done
	fi
	rm -rf "$WORK"
	echo "cleaned up: processes stopped, namespaces deleted"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -t 1 ]]; then
	step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	step() { printf '\n== %s\n' "$*"; }
fi
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# wait_for runs its arguments until they succeed, at most 10 s.
wait_for() {
	local what=$1; shift
	for _ in $(seq 100); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "timed out waiting for $what" >&2
	return 1
}

step "building gwlbproxy, gwlbsim and the test servers"
# The servers are internal/appliance's test binary: its init turns it into
# them when GWLBPROXY_NETNS_SERVER is set (netns_helpers_test.go).
# TestDemoBuildsTheServers (cmd/gwlbsim) checks that the two still agree.
(cd "$ROOT" &&
	go build -o "$WORK/" ./cmd/gwlbproxy ./cmd/gwlbsim &&
	go test -c -o "$WORK/servers.test" ./internal/appliance)

step "creating namespaces $CLIENT, $APP, $SRV"
for ns in "$CLIENT" "$APP" "$SRV"; do
	ip netns add "$ns"
	NAMESPACES+=("$ns")
	in_ns "$ns" sysctl -q -w net.ipv4.ip_forward=0 # the appliance forwards nothing in the kernel
	ip -n "$ns" link set lo up
done
ip -n "$CLIENT" link add to-app mtu 9001 type veth peer name to-client mtu 9001 netns "$APP"
ip -n "$APP" link add to-srv type veth peer name to-app netns "$SRV"
ip -n "$CLIENT" addr add "$SIM_ADDR/24" dev to-app
ip -n "$APP" addr add "$APPLIANCE_ADDR/24" dev to-client
ip -n "$APP" addr add "$APP_SRV_ADDR/24" dev to-srv
ip -n "$SRV" addr add "$SRV_ADDR/24" dev to-app
ip -n "$CLIENT" link set to-app up
ip -n "$APP" link set to-client up
ip -n "$APP" link set to-srv up
ip -n "$SRV" link set to-app up
# Keep IPv6 chatter (router solicitations, MLD) out of the tunnel.
in_ns "$CLIENT" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
# Unprivileged ICMP sockets for the appliance's echo relay (per namespace).
in_ns "$APP" sysctl -q -w net.ipv4.ping_group_range="0 2147483647"

step "starting the HTTP and DNS servers on $SRV_ADDR"
mkfifo "$WORK/servers.in"
GWLBPROXY_NETNS_SERVER=$SRV_ADDR ip netns exec "$SRV" "$WORK/servers.test" \
	<"$WORK/servers.in" >"$WORK/servers.log" 2>&1 &
PIDS+=($!)
exec 7>"$WORK/servers.in"
wait_for "the servers" grep -q '^ready$' "$WORK/servers.log"

step "starting gwlbproxy in $APP"
ip netns exec "$APP" "$WORK/gwlbproxy" --geneve-addr 0.0.0.0:6081 --admin-addr "$APPLIANCE_ADDR:8080" --gwlb-cidrs "$SIM_ADDR/32" \
	--access-log "$WORK/access.jsonl" --idle-timeout 2s --drain-timeout 5s 2>"$WORK/gwlbproxy.log" &
PIDS+=($!)
wait_for "the appliance's health check" in_ns "$APP" curl -sf --max-time 1 "$ADMIN/"

step "starting gwlbsim in $CLIENT, routing the client through tun0"
ip netns exec "$CLIENT" "$WORK/gwlbsim" --addr "$SIM_ADDR" --appliance "$APPLIANCE_ADDR" --tun tun0 \
	>"$WORK/gwlbsim.json" 2>"$WORK/gwlbsim.log" &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_for "gwlbsim's TUN device" ip -n "$CLIENT" link show tun0
ip -n "$CLIENT" addr add "$CLIENT_ADDR/32" dev tun0
ip -n "$CLIENT" link set tun0 up
ip -n "$CLIENT" route add default dev tun0 src "$CLIENT_ADDR"
ip -n "$CLIENT" route

step "curl http://$SRV_ADDR/hello (the server sees the appliance, $APP_SRV_ADDR)"
in_ns "$CLIENT" curl -sS --max-time 10 "http://$SRV_ADDR/hello"

step "dig @$SRV_ADDR www.gwlbproxy.test A"
in_ns "$CLIENT" dig +time=3 +tries=1 "@$SRV_ADDR" www.gwlbproxy.test A +short

step "ping -c 3 $SRV_ADDR (relayed; only the real host's answers come back)"
in_ns "$CLIENT" ping -n -c 3 -W 2 "$SRV_ADDR"

step "curl to a closed port: refused at once"
in_ns "$CLIENT" curl -sS --max-time 10 "http://$SRV_ADDR:81/" || true

if [[ $WAIT -eq 1 ]]; then
	step "running; try for example:"
	echo "  ip netns exec $CLIENT curl http://$SRV_ADDR/slow?n=5&ms=500"
	echo "  ip netns exec $APP curl $ADMIN/stats"
	echo "  tail -f $WORK/access.jsonl"
	read -r -p "press Enter to tear everything down " _ || true
fi

step "waiting for the UDP and ICMP flows to idle out (2 s) so their records are written"
sleep 3

step "appliance /stats (excerpt)"
in_ns "$APP" curl -sS --max-time 5 "$ADMIN/stats" | grep -E '"(return_path|packets_in|packets_out|tcp_connection_attempts|udp_flows|echo_requests)"'

step "access records ($WORK/access.jsonl)"
if command -v jq >/dev/null; then
	jq -c '{kind, action, result, client_ip, dest_ip, dest_port, bytes_out, bytes_in, flow_cookie}' "$WORK/access.jsonl"
else
	cat "$WORK/access.jsonl"
fi

step "gwlbsim's counters (printed on SIGTERM)"
stop_pid "$SIM_PID"
cat "$WORK/gwlbsim.json"
