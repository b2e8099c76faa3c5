#!/usr/bin/env bash
# LMTP delivery latency and throughput: Starling with exposure after k peers
# (k = 0, 1, 2; three nodes, the receiving node's peer links direct or with
# a round trip added by a delaying UDP relay; and one node alone, no peers)
# against Dovecot's LMTP server
# delivering into a Maildir, measured by the same client (`starling-bench
# deliver`) with the same messages and connections, one server at a time,
# in one run, on loopback.
# Usage: lmtp-vs-dovecot.sh WORKDIR [-- MORE_STARLING_BENCH_ARGS...]
# Environment:
#   CONNECTIONS (default 1,8) and MESSAGES (default 300,2000: one count per
#   entry of CONNECTIONS) for both servers; K (default 0,1,2) and RTT_MS
#   (default 0,50) for Starling; GEN_MAILDIR (the generator); BIN_DIR: take
#   `starling` and `starling-bench` from there instead of building them.
# WORKDIR keeps the corpus (gen-maildir.py files, reused if present).
# Results: WORKDIR/results.jsonl and WORKDIR/lmtp-vs-dovecot.md.
# Installs dovecot-lmtpd if missing and makes an unprivileged user
# `dovebench` (Dovecot delivers as a non-root user); run as root.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 WORKDIR [-- MORE_STARLING_BENCH_ARGS...]" >&2; exit 2; }
work=$1; shift
[ "${1:-}" != "--" ] || shift
extra=("$@")
mkdir -p "$work"; work=$(realpath "$work")
here=$(cd "$(dirname "$0")/../.." && pwd)
gen=${GEN_MAILDIR:-$here/../shared/tools/gen-maildir.py}
conns=${CONNECTIONS:-1,8} counts=${MESSAGES:-300,2000} ks=${K:-0,1,2} rtts=${RTT_MS:-0,50}
warmup=5
IFS=, read -r -a conn_list <<< "$conns"
IFS=, read -r -a count_list <<< "$counts"
most=$(printf '%s\n' "${count_list[@]}" | sort -n | tail -1)

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
pid=
cleanup() { [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; }
trap cleanup EXIT

# The corpus, generated under a temporary name so a partial one is never reused.
corpus=$work/corpus-$most
if [ ! -d "$corpus" ]; then
  rm -rf "$corpus.part"
  python3 "$gen" files "$corpus.part" "$most" --seed 1 >&2
  mv "$corpus.part" "$corpus"
fi

if [ -n "${BIN_DIR:-}" ]; then
  bin=$(realpath "$BIN_DIR")
else
  (cd "$here" && cargo build --release -q -p starling -p starling-bench)
  bin=$here/target/release
fi
bench=$bin/starling-bench
out=$work/results.jsonl
rm -f "$out"

[ -x /usr/lib/dovecot/lmtp ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-lmtpd >/dev/null; }
id dovebench >/dev/null 2>&1 || useradd -m -s /bin/sh dovebench
ver=$(dovecot --version | cut -d' ' -f1)
d=$work/dovecot
# base_dir holds unix sockets: keep its path short.
run=/tmp/dovebench-lmtp
for i in "${!conn_list[@]}"; do
  c=${conn_list[$i]} n=${count_list[$i]:-${count_list[-1]}}
  # A fresh Maildir and a fresh Dovecot for each cell, as Starling's nodes.
  rm -rf "$d" $run; mkdir -p "$d/mail" "$d/home" $run
  chown -R dovebench:dovebench "$d/mail" "$d/home"
  port=$(free_port)
  cat > "$d/dovecot.conf" <<CONF
base_dir = $run
log_path = $d/log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:$d/mail
namespace inbox {
  inbox = yes
}
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=dovebench gid=dovebench home=$d/home
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $port
  }
}
CONF
  dovecot -F -c "$d/dovecot.conf" & pid=$!
  wait_port "$port" $pid "dovecot (log: $d/log)"
  "$bench" deliver "$corpus" --lmtp "127.0.0.1:$port" --rcpt bench --connections "$c" --messages "$n" \
    --warmup $warmup --label "Dovecot $ver" --json "$out" --server-pid $pid
  kill -TERM $pid; wait $pid 2>/dev/null || true; pid=
  got=$(find "$d/mail/new" "$d/mail/cur" -type f | wc -l)
  [ "$got" -eq $((n + c * warmup)) ] || { echo "Dovecot's Maildir holds $got messages, $((n + c * warmup)) delivered" >&2; exit 1; }
done

rev=$(cd "$here" && git rev-parse --short HEAD)
"$bench" deliver "$corpus" --starling "$bin/starling" --connections "$conns" --messages "$counts" --k "$ks" \
  --rtt-ms "$rtts" --solo --warmup $warmup --label "Starling $rev" --json "$out" --dir "$work/starling" "${extra[@]}"

# Side by side: each Starling cell against Dovecot with the same connections.
python3 - "$out" <<'PY' | tee "$work/lmtp-vs-dovecot.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
dove = {r["connections"]: r for r in rows if r["k"] is None}
print("\n## LMTP delivery, same client, same messages, same run\n")
print("| server | k | RTT added (a–b, a–c) | connections | messages | msg/s | p50 ms | p99 ms | p99 ms, messages under 20 KB | server CPU ms/msg | msg/s vs Dovecot | p50 vs Dovecot |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    d = dove.get(r["connections"])
    k = "—" if r["k"] is None else str(r["k"])
    rtt = "—" if r["rtt_ms"] is None else f'+{r["rtt_ms"]:.0f} ms'
    ratio = f'{r["per_s"] / d["per_s"]:.2f}×' if d else "—"
    lat = f'{r["p50_ms"] / d["p50_ms"]:.2f}×' if d else "—"
    cpu = " + ".join(f'{s * 1000 / r["messages"]:.2f}' for s in r["server_cpu_s"]) or "—"
    print(f'| {r["label"]} | {k} | {rtt} | {r["connections"]} | {r["messages"]} | {r["per_s"]:.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["p99_small_ms"]:.2f} | {cpu} | {ratio} | {lat} |')
PY
