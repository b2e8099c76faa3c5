#!/usr/bin/env bash
# IMAP server: Dovecot imapd vs Starling, measured by the same client
# (`starling-bench imap`) in one run, on loopback, one server at a time.
# Usage: imap-vs-dovecot.sh [--only dovecot|starling] WORKDIR [-- MORE_BENCH_ARGS...]
# WORKDIR keeps the corpora (gen-maildir.py, 10,000 and 100,000 messages,
# reused if present); each server's data is rebuilt on every run.
# Both servers see the same mail: INBOX = the 10k corpus's INBOX, bench-100k =
# all 100,000 messages of the 100k corpus (Dovecot reads the Maildir in place;
# Starling imports it). bench-10k and bench-append are made by the client.
# Both servers check the same kind of password hash: Dovecot gets a
# passwd-file with an Argon2id hash made with Starling's parameters.
# The mixed-load and SORT/THREAD steps run only when asked, e.g.
#   imap-vs-dovecot.sh WORKDIR -- --steps sort,mixed --mixed-clients 10,50,200 --mixed-secs 20
# Environment: IDLE_CONNECTIONS (default 500), GEN_MAILDIR (the generator),
# LOGIN_CACHE (on: Starling's default auth_cache_size and Dovecot's
# auth_cache_size = 10M; off: both 0; default on), CLIENTS_MAX (connections
# of the mixed step at most, default 200; the servers' limits are raised
# for it and the idle connections), SETTLE_SECS (how long each server's
# part waits at most for the load average to fall under 1, default 120).
# Results: WORKDIR/dovecot.json, starling.json and imap-vs-dovecot.md.
# Installs dovecot-imapd and argon2 if missing and makes an unprivileged user
# `dovebench` (Dovecot's mail processes refuse root); run as root.
set -euo pipefail
usage() { echo "usage: $0 [--only dovecot|starling] WORKDIR [-- MORE_BENCH_ARGS...]" >&2; exit 2; }
only=both work=
while [ $# -gt 0 ]; do
  case $1 in
    --only) only=${2:-}; shift 2 || usage ;;
    --) shift; break ;;
    -*) usage ;;
    *) [ -z "$work" ] || usage; work=$1; shift ;;
  esac
done
if [ -z "$work" ] || ! [[ $only =~ ^(both|dovecot|starling)$ ]]; then usage; fi
mkdir -p "$work"; work=$(realpath "$work")
here=$(cd "$(dirname "$0")/../.." && pwd)
gen=${GEN_MAILDIR:-$here/../shared/tools/gen-maildir.py}
idle=${IDLE_CONNECTIONS:-500}
login_cache=${LOGIN_CACHE:-on}
[[ $login_cache =~ ^(on|off)$ ]] || { echo "LOGIN_CACHE must be on or off" >&2; exit 2; }
# Connections of the one account at once: the idle ones or the mixed step's.
conns=$(( idle > ${CLIENTS_MAX:-200} ? idle : ${CLIENTS_MAX:-200} ))
user=bench pass=bench-imap-pw
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
dpid='' spid=''
cleanup() {
  for p in $dpid $spid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $dpid $spid; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Corpora, generated under a temporary name so a partial one is never reused.
corpus() { # N DIR
  [ -d "$2" ] && return
  rm -rf "$2.part"
  python3 "$gen" maildir "$2.part" "$1" --seed 1 >&2
  mv "$2.part" "$2"
}
corpus 10000 "$work/corpus-10k"
corpus 100000 "$work/corpus-100k"
# The served tree, hard links into the corpora, laid out as a Maildir in use
# for a while: every message in cur/ (those of new/ with an empty ":2," info).
# On a tree made just now, Dovecot rescanned the 100,000 files at every SELECT
# (~90 ms each) for a while; the Dovecot copy also gets its directories
# backdated below.
link_all() { # DEST SRC...: every message file under SRC into DEST
  local dest=$1; shift
  find "$@" -path '*/cur/*' -type f -exec ln -t "$dest" {} +
  find "$@" -path '*/new/*' -type f -exec sh -c 'for f; do ln "$f" "$0/${f##*/}:2,"; done' "$dest" {} +
}
tree=$work/tree
if [ ! -e "$tree.complete" ]; then
  rm -rf "$tree"
  mkdir -p "$tree"/{cur,new,tmp} "$tree/.bench-100k"/{cur,new,tmp}
  touch "$tree/.bench-100k/maildirfolder"
  link_all "$tree/cur" "$work/corpus-10k/cur" "$work/corpus-10k/new"
  link_all "$tree/.bench-100k/cur" "$work/corpus-100k"
  touch "$tree.complete"
fi

build=(-p starling-bench); [ "$only" = dovecot ] || build+=(-p starling)
(cd "$here" && nice -n 10 cargo build --release -q "${build[@]}")
bench() { # LABEL JSON PID PORT
  "$here/target/release/starling-bench" imap --addr "127.0.0.1:$4" --user $user --password $pass \
    --maildir "$work/corpus-10k" --server-pids "$3" --idle-connections "$idle" --label "$1" --json "$2" "${extra[@]}"
}
extra=("$@")
rm -f "$work/dovecot.json" "$work/starling.json"
# Each server's part starts on a quiet machine: wait (at most SETTLE_SECS,
# default 120) until the 1-minute load average is under 1, so that the
# first server's processes winding down do not weigh on the second's part.
settle() { # LABEL
  local waited=0
  while [ "$waited" -lt "${SETTLE_SECS:-120}" ] && awk '{ exit !($1 >= 1.0) }' /proc/loadavg; do
    sleep 5; waited=$((waited + 5))
  done
  echo "$1: load average $(cut -d' ' -f1-3 /proc/loadavg) after waiting ${waited} s" >&2
}

if [ "$only" != starling ]; then
  [ -x /usr/lib/dovecot/imap ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; }
  id dovebench >/dev/null 2>&1 || useradd -m -s /bin/sh dovebench
  d=$work/dovecot; rm -rf "$d"; mkdir -p "$d"
  cp -al "$tree" "$d/mail"; chown -R dovebench:dovebench "$d/mail"
  dovecot_argon2_passwd "$d/passwd" $user $pass
  if [ "$login_cache" = on ]; then dcache=10M; else dcache=0; fi
  touch -d '-1 hour' "$d/mail"/{cur,new,tmp} "$d/mail/.bench-100k"/{cur,new,tmp}
  # base_dir holds unix sockets: keep its path short.
  run=/tmp/dovebench-imap; rm -rf $run; mkdir -p $run
  port=$(free_port)
  cat > "$d/dovecot.conf" <<CONF
base_dir = $run
log_path = $d/log
protocols = imap
listen = 127.0.0.1
ssl = no
# LOGIN in plain text, on loopback only.
disable_plaintext_auth = no
mail_location = maildir:$d/mail
namespace inbox {
  inbox = yes
}
auth_cache_size = $dcache
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = static
  args = uid=dovebench gid=dovebench home=/home/dovebench
}
# One imap process per connection: room for the idle connections and the
# mixed step's clients (imap-login too, so logins do not queue for one).
default_client_limit = $(( conns * 4 + 1000 ))
protocol imap {
  mail_max_userip_connections = $(( conns + 100 ))
}
service imap {
  process_limit = $(( conns + 100 > 1024 ? conns + 100 : 1024 ))
}
service imap-login {
  process_limit = $(( conns + 100 > 1024 ? conns + 100 : 1024 ))
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
  dovecot -F -c "$d/dovecot.conf" & dpid=$!
  wait_port "$port" $dpid "dovecot (log: $d/log)"
  settle Dovecot
  bench "Dovecot $(dovecot --version | cut -d' ' -f1)" "$work/dovecot.json" $dpid "$port"
  kill -TERM $dpid; wait $dpid 2>/dev/null || true; dpid=
fi

if [ "$only" != dovecot ]; then
  star=$here/target/release/starling
  s=$work/starling; rm -rf "$s"; mkdir -p "$s"
  "$star" --data-dir "$s/data" account add $user >/dev/null
  echo $pass | "$star" --data-dir "$s/data" account passwd $user >/dev/null
  "$star" --data-dir "$s/data" import maildir $user "$tree" > "$s/import.log" 2>&1 || { cat "$s/import.log" >&2; exit 1; }
  port=$(free_port)
  # Like Dovecot's raised limits: room for the idle connections of one account.
  if [ "$login_cache" = on ]; then scache=10000; else scache=0; fi
  printf '[imap]\nconnections_per_account = %d\nconnections_per_ip = %d\nconnections_max = %d\nauth_cache_size = %d\n' \
    $((conns + 16)) $((conns + 16)) $((conns + 1000)) $scache > "$s/starling.toml"
  "$star" --data-dir "$s/data" serve --config "$s/starling.toml" --peer-listen 127.0.0.1:0 --lmtp-listen 127.0.0.1:0 \
    --imap-listen "127.0.0.1:$port" --imaps-listen 127.0.0.1:0 > "$s/log" 2>&1 & spid=$!
  wait_port "$port" $spid "starling serve (log: $s/log)"
  grep -q "imap: listening on" "$s/log" || { echo "starling serve: no 'imap: listening on' line (log: $s/log)" >&2; exit 1; }
  settle Starling
  bench "Starling $(cd "$here" && git rev-parse --short HEAD)" "$work/starling.json" $spid "$port"
  kill -TERM $spid; wait $spid 2>/dev/null || true; spid=
fi

# Side by side, with how many times better Starling is (> 1: Starling better).
python3 - "$work/dovecot.json" "$work/starling.json" <<'PY' | tee "$work/imap-vs-dovecot.md"
import json, os, sys
runs = [json.load(open(p)) for p in sys.argv[1:] if os.path.exists(p)]
print("\n## IMAP, same client, same run: " + " vs ".join(r["label"] for r in runs) + "\n")
head = ["measurement"] + [r["label"] for r in runs] + (["Starling better by"] if len(runs) == 2 else [])
print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
rows = [{x["key"]: x for x in r["rows"]} for r in runs]
for key in dict.fromkeys(k for r in rows for k in r if not k.startswith("mixed-")):
    cells = [r.get(key) for r in rows]
    what = next(c for c in cells if c)["what"]
    line = [what] + [f'{c["result"]} ({c["detail"]})' if c else "—" for c in cells]
    if len(runs) == 2:
        d, s = cells
        if d and s and d["value"] > 0 and s["value"] > 0:
            line.append(f'{(s["value"] / d["value"]) if d["better"] == "higher" else (d["value"] / s["value"]):.2f}×')
        else:
            line.append("—")
    print("| " + " | ".join(line) + " |")
# The mixed step: per number of clients and command, throughput and
# p50/p99 latency of each server, and Starling's ratios (> 1: better).
mixed = [[x for x in r["rows"] if x["key"].startswith("mixed-")] for r in runs]
if any(mixed):
    labels = [r["label"] for r in runs]
    print("\n### Mixed load, per command: OK answers/s, p50 / p99 ms (failed)\n")
    head = ["clients", "command"] + labels + (["throughput S/D", "p99 D/S"] if len(runs) == 2 else [])
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    by = [{x["key"]: x["extra"] for x in m} for m in mixed]
    for key in dict.fromkeys(k for m in by for k in m):
        cells = [m.get(key) for m in by]
        e = next(c for c in cells if c)
        line = [str(e["clients"]), e["command"]]
        for c in cells:
            ms = lambda v: "—" if v is None else f"{v:.1f}"
            line.append(f'{c["rate"]:.1f}/s, {ms(c["p50_ms"])} / {ms(c["p99_ms"])} ms' + (f' ({c["errors"]} failed)' if c["errors"] else "") if c else "—")
        if len(runs) == 2:
            d, s = cells
            ok = d and s and d["rate"] > 0 and s["rate"] > 0
            line.append(f'{s["rate"] / d["rate"]:.2f}×' if ok else "—")
            line.append(f'{d["p99_ms"] / s["p99_ms"]:.2f}×' if ok and d["p99_ms"] and s["p99_ms"] else "—")
        print("| " + " | ".join(line) + " |")
    for r, m in zip(runs, mixed):
        seen = {}
        for x in m:
            seen.setdefault(x["extra"]["clients"], x["extra"])
        print(f'\n{r["label"]}: ' + "; ".join(f'{n} clients: {e["loops"]} loops in {e["secs"]:.1f} s, load {e["load_before"]} → {e["load_after"]}, {e["left_behind"]} appended messages left behind' for n, e in seen.items()))
PY
