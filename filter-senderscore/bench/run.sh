#!/usr/bin/env bash
# filter-senderscore against Debian's Go filter-senderscore on the same protocol stream,
# plus lookups per second (cold and warm cache) against a local DNS server.
#
#   bench/run.sh [--sessions N] [--runs R] [--work DIR] [--dns IP] [--clients N]
#
# Needs root (apt-get, a private mount namespace for the Go filter's resolv.conf).
# Everything runs on loopback: a dnsmasq on IP:53 (default 127.77.0.53) serves
# SenderScore records for the stream's clients and answers NXDOMAIN to anything else.
#
# The stream is /work/shared/bench/gen-stream.py's (protocol 0.7), reduced to the lines
# smtpd would send the Go filter: the reports it registers (link-connect,
# link-disconnect) and the filter requests. Both filters get the same bytes and run with
# -scoreHeader -junkBelow 50. Debian's Go filter (0.1.1) has no -testMode, so the
# comparison is made with DNS (its resolv.conf points at the local dnsmasq, ours gets
# --resolver); ours in -testMode is measured too. Each run is
#   cat stream | /usr/bin/time -v FILTER | cat > out
# and the answers are counted (one per request, plus the header lines).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
GEN="${GEN_STREAM:-$ROOT/../shared/bench/gen-stream.py}"
[ -f "$GEN" ] || GEN=/work/shared/bench/gen-stream.py
WORK=/tmp/senderscore-bench
SESSIONS=5000
RUNS=1
DNS=127.77.0.53
CLIENTS=20000
GO=/usr/libexec/opensmtpd/filter-senderscore
FLAGS=(-scoreHeader -junkBelow 50)

while [ $# -gt 0 ]; do
	case "$1" in
	--sessions) SESSIONS="$2"; shift 2;;
	--runs) RUNS="$2"; shift 2;;
	--work) WORK="$2"; shift 2;;
	--dns) DNS="$2"; shift 2;;
	--clients) CLIENTS="$2"; shift 2;;
	-h|--help) sed -n 2,20p "$0"; exit 0;;
	*) echo "unknown argument: $1" >&2; exit 2;;
	esac
done

log() { printf '%s\n' "$*" >&2; }
mkdir -p "$WORK"

# ------------------------------------------------------------------ tools ----
missing=()
for pair in /usr/bin/time:time /usr/sbin/dnsmasq:dnsmasq-base "$GO":opensmtpd-filter-senderscore /usr/bin/python3:python3; do
	[ -x "${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "apt-get install ${missing[*]}"
	[ -e /usr/sbin/policy-rc.d ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd "$ROOT" && cargo build --release --locked -q -p filter-senderscore --bin filter-senderscore --example lookups)
OURS="$ROOT/target/release/filter-senderscore"
LOOKUPS="$ROOT/target/release/examples/lookups"

# ----------------------------------------------------------------- stream ----
SDIR="$WORK/stream-s$SESSIONS"
if [ ! -f "$SDIR/stream.txt" ]; then
	log "generating $SESSIONS sessions into $SDIR"
	mkdir -p "$SDIR"
	python3 "$GEN" --sessions "$SESSIONS" --seed 1 --out-dir "$SDIR" >/dev/null
fi
STREAM="$SDIR/senderscore-stream.txt"
if [ ! -f "$STREAM" ]; then
	# what smtpd sends a filter that registered link-connect, link-disconnect and the phases
	LC_ALL=C awk -F'|' '$1 == "config" || $1 == "filter" ||
		($1 == "report" && ($5 == "link-connect" || $5 == "link-disconnect"))' \
		"$SDIR/stream.txt" >"$STREAM"
fi
REQUESTS=$(LC_ALL=C grep -c '^filter|' "$STREAM")
LINES=$(wc -l <"$STREAM")
BYTES=$(stat -c %s "$STREAM")

# -------------------------------------------------------------------- DNS ----
DDIR="$WORK/dns"
mkdir -p "$DDIR"
{
	echo "port=53"
	echo "listen-address=$DNS"
	echo "bind-interfaces"
	echo "no-resolv"
	echo "no-hosts"
	echo "no-poll"
	echo "local=/#/"
	echo "local-ttl=300"
	echo "cache-size=0"
	# the stream's clients: score = 4th octet mod 101
	for net in 192.0.2 198.51.100; do
		IFS=. read -r a b c <<<"$net"
		for d in $(seq 1 254); do
			echo "host-record=$d.$c.$b.$a.score.senderscore.com,127.0.4.$((d % 101))"
		done
	done
	# the lookup bench's clients 10.1.X.Y
	python3 -c "
for i in range($CLIENTS):
    n = i + 1
    x, y = n // 250, n % 250 + 1
    print(f'host-record={y}.{x}.1.10.score.senderscore.com,127.0.4.{(x + y) % 101}')
"
} >"$DDIR/dnsmasq.conf"
printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$DNS" >"$DDIR/resolv.conf"
/usr/sbin/dnsmasq --keep-in-foreground --conf-file="$DDIR/dnsmasq.conf" --pid-file= \
	--log-facility=- --user=nobody >"$DDIR/dnsmasq.log" 2>&1 &
DNSMASQ_PID=$!
trap 'kill "$DNSMASQ_PID" 2>/dev/null || true; wait "$DNSMASQ_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	grep -q "$(printf '%08X:0035' "$(IFS=.; set -- $DNS; echo $(( ($4<<24) | ($3<<16) | ($2<<8) | $1 )))")" /proc/net/udp && break
	sleep 0.05
done

# -------------------------------------------------------------------- run ----
RESULTS="$WORK/results-$(date +%Y%m%d-%H%M%S).md"
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@" | tee -a "$RESULTS"; }
{
	echo "stream: $SESSIONS sessions, $LINES lines, $BYTES bytes, $REQUESTS requests; flags: ${FLAGS[*]}"
	echo
	echo "| filter | run | wall s | user s | sys s | max RSS KB | answers / requests | junk, headers |"
	echo "|---|---|---|---|---|---|---|---|"
} | tee "$RESULTS"

measure() { # name run command...
	local name="$1" run="$2"
	shift 2
	local tf="$WORK/$name.time" out="$WORK/$name.out" err="$WORK/$name.err"
	cat "$STREAM" | "$@" 2>"$err" | cat >"$out" || true
	local wall user sys rss answers headers junk
	wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$tf")
	user=$(awk -F': ' '/User time/ {print $2}' "$tf")
	sys=$(awk -F': ' '/System time/ {print $2}' "$tf")
	rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$tf")
	headers=$(LC_ALL=C grep -c '^filter-dataline|[0-9a-f]*|[0-9a-f]*|X-SenderScore: ' "$out" || true)
	answers=$(( $(LC_ALL=C grep -c '^filter-' "$out" || true) - headers ))
	junk=$(LC_ALL=C grep -c '|junk$' "$out" || true)
	row "$name" "$run" "$wall" "$user" "$sys" "$rss" "$answers / $REQUESTS" "$junk, $headers"
}

for run in $(seq "$RUNS"); do
	measure ours-testMode "$run" /usr/bin/time -v -o "$WORK/ours-testMode.time" "$OURS" -testMode "${FLAGS[@]}"
	measure ours-dns "$run" /usr/bin/time -v -o "$WORK/ours-dns.time" "$OURS" --resolver "$DNS:53" "${FLAGS[@]}"
	measure go-dns "$run" unshare -m --propagation private /bin/sh -c \
		"mount --bind '$DDIR/resolv.conf' /etc/resolv.conf && exec /usr/bin/time -v -o '$WORK/go-dns.time' '$GO' ${FLAGS[*]}"
done

{
	echo
	echo "lookups through the filter's Scorer against dnsmasq at $DNS:53 ($CLIENTS clients, 64 at once):"
	echo
	echo '```'
	"$LOOKUPS" "$DNS:53" "$CLIENTS" 64
	echo '```'
} | tee -a "$RESULTS"
log "results: $RESULTS"
