#!/usr/bin/env bash
# Maildir import: Starling vs `doveadm import` on the same tree, same machine.
# Usage: maildir-import-vs-dovecot.sh MAILDIR_ROOT
# Installs dovecot-core if missing and makes an unprivileged user `dovebench`
# (Dovecot refuses to access mail as root). Caches are dropped before each run.
set -euo pipefail
src=$(realpath "$1")
here=$(cd "$(dirname "$0")/../.." && pwd)
command -v doveadm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-core >/dev/null; }
id dovebench >/dev/null 2>&1 || useradd -m -s /bin/sh dovebench
run=/tmp/dovebench-run; mkdir -p $run; chown dovebench $run
cat > /tmp/dovebench.conf <<CONF
base_dir = $run
log_path = /dev/stderr
mail_location = maildir:~/Maildir
protocols =
ssl = no
first_valid_uid = 100
CONF
chmod a+r /tmp/dovebench.conf
bytes=$(du -sb "$src" | cut -f1)
msgs=$(find "$src" -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# Dovecot: a private copy (it writes its index files into the source too).
rm -rf /home/dovebench/src /home/dovebench/Maildir
cp -a "$src" /home/dovebench/src; chown -R dovebench:dovebench /home/dovebench/src
drop
t0=$(date +%s.%N)
runuser -u dovebench -- env HOME=/home/dovebench USER=dovebench doveadm -c /tmp/dovebench.conf import maildir:/home/dovebench/src "" all
sync
t1=$(date +%s.%N)
dove=$(echo "$t1 - $t0" | bc)
dove_n=$(find /home/dovebench/Maildir -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)

# Starling.
(cd "$here" && cargo build --release -q -p starling-bench)
out=$(mktemp -d)
drop
t0=$(date +%s.%N)
"$here/target/release/starling-bench" import "$src" --dir "$out" > "$out/summary"
t1=$(date +%s.%N)
star=$(echo "$t1 - $t0" | bc)
cat "$out/summary"
size=$(du -sb "$out/import.redb" | cut -f1)
dsize=$(du -sb /home/dovebench/Maildir | cut -f1)
rm -rf "$out" /home/dovebench/src /home/dovebench/Maildir

echo
echo "| importer | messages | time | messages/s | MB/s | on disk after |"
echo "|---|---|---|---|---|---|"
printf "| doveadm import (Dovecot %s) | %s | %.1f s | %.0f | %.1f | %.0f MB |\n" "$(dovecot --version | cut -d' ' -f1)" "$dove_n" "$dove" "$(echo "$msgs / $dove" | bc -l)" "$(echo "$bytes / 1000000 / $dove" | bc -l)" "$(echo "$dsize / 1000000" | bc -l)"
printf "| starling import maildir | %s | %.1f s | %.0f | %.1f | %.0f MB |\n" "$msgs" "$star" "$(echo "$msgs / $star" | bc -l)" "$(echo "$bytes / 1000000 / $star" | bc -l)" "$(echo "$size / 1000000" | bc -l)"
printf "ratio (doveadm time / starling time): %.2f\n" "$(echo "$dove / $star" | bc -l)"
