#!/usr/bin/env bash
# Logins per second: Starling with and without its cache of verified logins,
# and Dovecot imapd with the same Argon2id parameters (with and without its
# auth cache) and with a plain-text password, measured by the same client
# (`starling-bench imap --steps logins`) in one run, one server at a time, on
# loopback.
# Usage: logins-vs-dovecot.sh WORKDIR [-- MORE_BENCH_ARGS...]
#   e.g. -- --login-clients 10 --login-secs 10
# Results: WORKDIR/<run>.json and WORKDIR/logins-vs-dovecot.md.
# Installs dovecot-imapd and argon2 (the reference CLI, to make Dovecot's
# hash with Starling's parameters) if missing, and makes an unprivileged user
# `dovebench` (Dovecot's mail processes refuse root); run as root.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 WORKDIR [-- MORE_BENCH_ARGS...]" >&2; exit 2; }
work=$1; shift
[ "${1:-}" != "--" ] || shift
extra=("$@")
mkdir -p "$work"; work=$(realpath "$work")
here=$(cd "$(dirname "$0")/../.." && pwd)
user=bench pass=bench-imap-pw

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
pid=
cleanup() { [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; }
trap cleanup EXIT

(cd "$here" && cargo build --release -q -p starling -p starling-bench)
# The bench wants a Maildir (for its other steps); one message will do.
md=$work/maildir; mkdir -p "$md"/{cur,new,tmp}
printf 'Subject: hi\n\nhello\n' > "$md/cur/1.bench:2,S"
bench() { # LABEL JSON PORT
  "$here/target/release/starling-bench" imap --addr "127.0.0.1:$3" --user $user --password $pass \
    --maildir "$md" --steps logins --label "$1" --json "$2" "${extra[@]}"
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

star=$here/target/release/starling
s=$work/starling; rm -rf "$s"; mkdir -p "$s"
"$star" --data-dir "$s/data" account add $user >/dev/null
echo $pass | "$star" --data-dir "$s/data" account passwd $user >/dev/null
rev=$(cd "$here" && git rev-parse --short HEAD)
for cache in 10000 0; do
  port=$(free_port)
  printf '[imap]\nauth_cache_size = %d\n' $cache > "$s/starling.toml"
  "$star" --data-dir "$s/data" serve --config "$s/starling.toml" --peer-listen 127.0.0.1:0 --lmtp-listen 127.0.0.1:0 \
    --imap-listen "127.0.0.1:$port" --imaps-listen 127.0.0.1:0 > "$s/log" 2>&1 & pid=$!
  wait_port "$port" $pid "starling serve (log: $s/log)"
  if [ $cache -gt 0 ]; then label="Starling $rev, login cache"; else label="Starling $rev, no cache"; fi
  bench "$label" "$work/starling-cache-$cache.json" "$port"
  stop
done

[ -x /usr/lib/dovecot/imap ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; }
id dovebench >/dev/null 2>&1 || useradd -m -s /bin/sh dovebench
d=$work/dovecot; rm -rf "$d"; mkdir -p "$d/mail"/{cur,new,tmp}; chown -R dovebench:dovebench "$d/mail"
dovecot_argon2_passwd "$d/passwd" $user $pass
m_kib=$argon2_m_kib t=$argon2_t p=$argon2_p
run=/tmp/dovebench-logins; rm -rf $run; mkdir -p $run
ver=$(dovecot --version | cut -d' ' -f1)
for mode in argon2 argon2-cache plain; do
  port=$(free_port)
  case $mode in
    plain) passdb="driver = static
  args = password=$pass"; cache=0 ;;
    argon2) passdb="driver = passwd-file
  args = $d/passwd"; cache=0 ;;
    argon2-cache) passdb="driver = passwd-file
  args = $d/passwd"; cache=10M ;;
  esac
  cat > "$d/dovecot.conf" <<CONF
base_dir = $run
log_path = $d/log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_cache_size = $cache
mail_location = maildir:$d/mail
namespace inbox {
  inbox = yes
}
passdb {
  $passdb
}
userdb {
  driver = static
  args = uid=dovebench gid=dovebench home=/home/dovebench
}
protocol imap {
  mail_max_userip_connections = 1000
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
  dovecot -F -c "$d/dovecot.conf" & pid=$!
  wait_port "$port" $pid "dovecot (log: $d/log)"
  case $mode in
    plain) label="Dovecot $ver, plain-text password" ;;
    argon2) label="Dovecot $ver, Argon2id (m=$m_kib,t=$t,p=$p), no auth cache" ;;
    argon2-cache) label="Dovecot $ver, Argon2id (m=$m_kib,t=$t,p=$p), auth_cache_size = 10M" ;;
  esac
  bench "$label" "$work/dovecot-$mode.json" "$port"
  stop
done

python3 - "$work"/starling-cache-10000.json "$work"/starling-cache-0.json "$work"/dovecot-{argon2-cache,argon2,plain}.json <<'PY' | tee "$work/logins-vs-dovecot.md"
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
row = lambda r: next(x for x in r["rows"] if x["key"] == "logins")
print("\n## IMAP logins/s, same client, same run (" + row(runs[0])["what"] + ")\n")
print("| server | logins/s | detail |\n|---|---|---|")
for r in runs:
    x = row(r)
    print(f'| {r["label"]} | {x["value"]:.0f} | {x["detail"]} |')
PY
