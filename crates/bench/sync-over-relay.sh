#!/usr/bin/env bash
# Initial sync over a slow or lossy link, Starling against `doveadm sync`,
# same tree, same run. The kernel here has no netem, so the link is a
# user-space relay (`starling-bench relay`, crates/bench/src/relay.rs):
#  - Starling: two `starling serve` processes; the dialing node's `peer add`
#    address is a UDP relay in front of the other (`starling-bench
#    relay-sync`), every QUIC datagram held D ms one way and, with loss,
#    a fraction dropped each way.
#  - dsync: `doveadm sync` (Dovecot, default mode) with its protocol over a
#    pipe to `doveadm dsync-server`, as in sync-vs-dsync.sh, the pipe going
#    through the relay's pipe mode: every chunk held D ms one way. A stream
#    cannot lose bytes in user space: with loss, each 1,448-byte segment is
#    "lost" with that probability and arrives one round trip (at least
#    1 ms) late, everything behind it waiting (TCP's in-order delivery after
#    a fast retransmit). That is a lower bound on what loss costs TCP.
# One-way delays 0, 25 and 100 ms (RTT +0, +50, +200 ms), then 1% loss at
# 0 ms. Times run from the start of the sync until the receiver holds every
# message (Starling: every op and body, both processes started inside the
# time; dsync: until `doveadm sync` returns, indexing of the source Maildir
# included, as in sync-vs-dsync.sh).
#
# Usage: sync-over-relay.sh MAILDIR_ROOT
#   SETTINGS="0:0 25:0 100:0 0:0.01" (one-way delay ms : loss) to change the rows.
# Installs dovecot-core if missing and makes an unprivileged user `dovebench`.
set -euo pipefail
src=$(realpath "$1")
here=$(cd "$(dirname "$0")/../.." && pwd)
settings=${SETTINGS:-"0:0 25:0 100:0 0:0.01"}
command -v doveadm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-core >/dev/null; }
id dovebench >/dev/null 2>&1 || useradd -m -s /bin/sh dovebench
run=/tmp/dovebench-run; mkdir -p $run; chown dovebench $run
home=/home/dovebench
cat > /tmp/dsync-bench.conf <<CONF
base_dir = $run
log_path = /dev/stderr
mail_location = maildir:$home/A
protocols =
ssl = no
first_valid_uid = 100
CONF
chmod a+r /tmp/dsync-bench.conf
(cd "$here" && cargo build --release -q -p starling -p starling-bench)
bench="$here/target/release/starling-bench"
# dovebench runs the relay as dsync's remote command: a copy it can reach.
install -m 755 "$bench" /tmp/starling-bench-relay
work=$(mktemp -d /tmp/sync-over-relay.XXXXXX)
trap 'rm -rf "$work" $home/A $home/B' EXIT
msgs=$(find "$src" -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)
as_user() { runuser -u dovebench -- env HOME=$home USER=dovebench "$@"; }

# dsync_run DELAY_MS LOSS -> "SECONDS BYTES_AB BYTES_BA"
dsync_run() {
  local t0 t1 got
  rm -rf $home/A $home/B
  cp -a "$src" $home/A; chown -R dovebench:dovebench $home/A
  cat > /tmp/dsync-relay.sh <<EOF
#!/bin/sh
exec /tmp/starling-bench-relay relay --pipe --delay-ms $1 --loss $2 --counts /tmp/dsync-counts -- \
  doveadm -c /tmp/dsync-bench.conf -o mail_location=maildir:$home/B dsync-server
EOF
  chmod 755 /tmp/dsync-relay.sh
  sync
  t0=$(date +%s.%N)
  as_user doveadm -c /tmp/dsync-bench.conf sync /tmp/dsync-relay.sh
  t1=$(date +%s.%N)
  got=$(find $home/B -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)
  [ "$got" -eq "$msgs" ] || { echo "dsync: B holds $got of $msgs messages" >&2; exit 1; }
  read -r ab ba < /tmp/dsync-counts
  echo "$(echo "$t1 - $t0" | bc) $ab $ba"
}

# starling_run DELAY_MS LOSS -> "SECONDS WIRE_AB WIRE_BA"
starling_run() {
  local out line
  sync
  out=$("$bench" relay-sync "$src" --delay-ms "$1" --loss "$2" --work "$work")
  echo "$out" | grep '^|' >&2
  line=$(echo "$out" | grep '^result ')
  case "$line" in *equal=true*alive=true*) ;; *) echo "starling: $line" >&2; exit 1 ;; esac
  echo "$line" | sed -E 's/.*secs=([0-9.]+) wire_ab=([0-9]+) wire_ba=([0-9]+).*/\1 \2 \3/'
}

size() { awk -v b="$1" 'BEGIN { if (b >= 1e6) printf "%.1f MB", b / 1e6; else printf "%.0f KB", b / 1e3 }'; }
rows=()
for s in $settings; do
  d=${s%%:*}; l=${s##*:}
  echo "one-way delay $d ms, loss $l: dsync..." >&2
  res=$(dsync_run "$d" "$l")
  read -r ds dab dba <<< "$res"
  echo "  dsync $ds s" >&2
  echo "one-way delay $d ms, loss $l: Starling..." >&2
  res=$(starling_run "$d" "$l")
  read -r ss sab sba <<< "$res"
  echo "  Starling $ss s" >&2
  rtt=$(echo "2 * $d" | bc)
  pct=$(echo "$l * 100" | bc -l | sed -E 's/\.?0+$//')
  label="RTT +$rtt ms"
  [ "$l" = 0 ] || label="$label, $pct% loss each way (dsync's modelled)"
  rows+=("| $label | $(printf %.2f "$ds") s | $(printf %.2f "$ss") s | $(echo "scale=2; $ds / $ss" | bc)× | $(size "$dab") / $(size "$dba") | $(size "$sab") / $(size "$sba") |")
done

echo
echo "## Initial sync over a delaying relay: $msgs messages ($(du -sh "$src" | cut -f1)), dsync $(dovecot --version | cut -d' ' -f1) against Starling, same run"
echo
echo "| link | dsync | Starling | dsync / Starling | dsync bytes a→b / b→a (pipe) | Starling bytes a→b / b→a (UDP, QUIC + TLS) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
