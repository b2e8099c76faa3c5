#!/usr/bin/env bash
# Replication: Starling (two `starling serve` processes over QUIC on
# loopback) vs `doveadm sync` (dsync over a pipe, bytes counted both ways by
# count-bytes.py) on the same Maildir tree, in the same run.
# Usage: sync-vs-dsync.sh MAILDIR_ROOT
# Installs dovecot-core if missing and makes an unprivileged user `dovebench`.
set -euo pipefail
src=$(realpath "$1")
here=$(cd "$(dirname "$0")/../.." && pwd)
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
install -m 755 "$here/crates/bench/count-bytes.py" /tmp/count-bytes.py
msgs=$(find "$src" -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)
k=$(( msgs / 100 )); [ "$k" -ge 1 ] || k=1
as_user() { runuser -u dovebench -- env HOME=$home USER=dovebench "$@"; }
dsync() {
  local t0 t1
  t0=$(date +%s.%N)
  as_user doveadm -c /tmp/dsync-bench.conf sync "$@" python3 /tmp/count-bytes.py /tmp/dsync-counts \
    doveadm -c /tmp/dsync-bench.conf -o mail_location=maildir:$home/B dsync-server
  t1=$(date +%s.%N)
  read -r ab ba < /tmp/dsync-counts
  printf "%.2f s | %s | %s" "$(echo "$t1 - $t0" | bc)" "$ab" "$ba"
}
rm -rf $home/A $home/B
cp -a "$src" $home/A; chown -R dovebench:dovebench $home/A
# Dovecot indexes the Maildir on first access; that is part of its initial sync.
echo "## doveadm sync $(dovecot --version | cut -d' ' -f1), $msgs messages"
echo
echo "| step | time | bytes a→b | bytes b→a |"
echo "|---|---|---|---|"
echo "| initial sync | $(dsync) |"
as_user doveadm -c /tmp/dsync-bench.conf flags add '\Flagged' mailbox INBOX uid 1:$k
echo "| 1% flag change ($k messages in INBOX), default mode | $(dsync) |"
echo "| no-op | $(dsync) |"
rm -rf $home/A $home/B

(cd "$here" && cargo build --release -q -p starling -p starling-bench)
"$here/target/release/starling-bench" net "$src"
