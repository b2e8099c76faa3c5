#!/usr/bin/env bash
# mbsync (isync) round trip against a running IMAP server.
#
# Usage: mbsync_roundtrip.sh HOST PORT USER PASSWORD WORKDIR
#
# Plain IMAP (SSLType None, AuthMechs LOGIN: meant for loopback), a Maildir
# store under WORKDIR, channels for INBOX and one fresh folder, Create Both,
# Expunge Both, SyncState *.
#   (a) seed the server with imaplib APPEND (one \Flagged, one \Seen), run
#       mbsync, check the Maildir has every message with the right flag letters;
#   (b) drop a new message into the local INBOX and mark an existing one S,
#       run mbsync, check with imaplib that the server has the new message and
#       \Seen on the other;
#   (c) \Deleted + EXPUNGE one message on the server, run mbsync, check it is
#       gone from the Maildir.
# Every run uses its own token (folder name, Message-IDs, Maildir and rc file
# under WORKDIR); the messages it put in INBOX and its folder are removed from
# the server at exit.  The local files are kept (for a look after a failure).
# Exits non-zero with "FAIL: ..." on the first failed step.
set -euo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 HOST PORT USER PASSWORD WORKDIR" >&2
  exit 2
fi
HOST=$1 PORT=$2 USER_=$3 PASSWORD=$4
mkdir -p "$5"
WORKDIR=$(cd "$5" && pwd)

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok $*"; }

if ! command -v mbsync >/dev/null 2>&1; then
  echo "installing isync (mbsync)..."
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq isync; } >/dev/null \
    || fail "mbsync missing and 'apt-get install isync' failed"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 missing"

TOKEN="mbs$(date +%s)$$$RANDOM"
RUN=$WORKDIR/$TOKEN
MAILDIR=$RUN/maildir
RC=$RUN/mbsyncrc
LOG=$RUN/mbsync.log
HELPER=$RUN/imap_helper.py
mkdir -p "$MAILDIR"
export IMAP_HOST=$HOST IMAP_PORT=$PORT IMAP_USER=$USER_ IMAP_PASSWORD=$PASSWORD TOKEN

# ---------------------------------------------------------------------------
# server side: a small imaplib helper (stdlib only)
cat > "$HELPER" <<'PY'
import email.utils, imaplib, os, re, sys, time

H, P = os.environ["IMAP_HOST"], int(os.environ["IMAP_PORT"])
U, PW, TOKEN = os.environ["IMAP_USER"], os.environ["IMAP_PASSWORD"], os.environ["TOKEN"]


def die(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def conn():
    m = imaplib.IMAP4(H, P, timeout=30)
    m.login(U, PW)
    typ, dat = m.capability()  # post-login capabilities
    m.caps = set(dat[0].decode().upper().split()) if typ == "OK" and dat and dat[0] else set()
    return m


def leave(m):
    """Deselect without expunging anything else the user has marked \\Deleted."""
    if "UNSELECT" in m.caps:
        m.unselect()


def folder(m):
    """The test folder: TOKEN under the personal namespace."""
    typ, dat = m.namespace()
    mm = re.match(rb'\(\("([^"]*)" (?:"(.)"|NIL)', dat[0] or b"")
    prefix = mm.group(1).decode() if mm else ""
    return prefix + TOKEN


def msgid(n):
    return "<%s-%d@mbsync.test>" % (TOKEN, n)


def message(n, subject):
    return ("From: Sync Test <sync@example.org>\r\n"
            "To: %s\r\n"
            "Subject: %s\r\n"
            "Date: %s\r\n"
            "Message-ID: %s\r\n"
            "\r\n"
            "mbsync round trip body %d\r\n" % (U, subject, email.utils.formatdate(), msgid(n), n)).encode()


def find(m, mbox, n):
    """{uid: flags} of the messages with Message-ID n in mbox."""
    typ, _ = m.select(q(mbox))
    if typ != "OK":
        die("SELECT %s: %s" % (mbox, typ))
    typ, dat = m.uid("SEARCH", "HEADER", "Message-ID", q(msgid(n)[1:-1]))
    if typ != "OK":
        die("UID SEARCH in %s: %s" % (mbox, typ))
    out = {}
    for uid in (dat[0] or b"").split():
        typ, fd = m.uid("FETCH", uid, "(FLAGS)")
        fl = re.search(rb"FLAGS \(([^)]*)\)", fd[0] if isinstance(fd[0], bytes) else fd[0][0])
        out[int(uid)] = {f.lower() for f in (fl.group(1).decode().split() if fl else [])} - {"\\recent"}
    return out


def append(m, mbox, n, flags):
    typ, dat = m.append(q(mbox), "(" + " ".join(flags) + ")" if flags else None,
                        imaplib.Time2Internaldate(time.time()), message(n, "mbsync test %d" % n))
    if typ != "OK":
        die("APPEND %d to %s: %s %r" % (n, mbox, typ, dat))


def main():
    cmd = sys.argv[1]
    m = conn()
    box = folder(m)
    if cmd == "folder":
        print(box)
    elif cmd == "seed":
        typ, dat = m.create(q(box))
        if typ != "OK":
            die("CREATE %s: %r" % (box, dat))
        append(m, "INBOX", 1, ["\\Flagged"])
        append(m, "INBOX", 2, [])
        append(m, box, 3, ["\\Seen"])
        append(m, box, 4, [])
    elif cmd == "check-b":
        new = find(m, "INBOX", 5)
        if len(new) != 1:
            die("server INBOX has %d copies of the message added to the Maildir (want 1)" % len(new))
        two = find(m, "INBOX", 2)
        if len(two) != 1 or "\\seen" not in list(two.values())[0]:
            die("message 2 on the server lacks \\Seen after mbsync: %s" % two)
        one = find(m, "INBOX", 1)
        if len(one) != 1 or list(one.values())[0] != {"\\flagged"}:
            die("message 1 on the server changed: %s" % one)
        leave(m)
    elif cmd == "expunge":
        four = find(m, box, 4)
        if len(four) != 1:
            die("message 4 not on the server: %s" % four)
        uid = str(list(four)[0])
        typ, _ = m.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
        if typ != "OK":
            die("STORE \\Deleted: %s" % typ)
        typ, _ = m.expunge()
        if typ != "OK":
            die("EXPUNGE: %s" % typ)
        if find(m, box, 4):
            die("message 4 still on the server after EXPUNGE")
        m.close()
    elif cmd == "cleanup":
        # only this run's messages leave INBOX (UID EXPUNGE, never a bare EXPUNGE)
        m.select("INBOX")
        for n in (1, 2, 5):
            typ, dat = m.uid("SEARCH", "HEADER", "Message-ID", q(msgid(n)[1:-1]))
            for uid in (dat[0] or b"").split():
                m.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
                if "UIDPLUS" in m.caps:
                    m.uid("EXPUNGE", uid)
        if "UIDPLUS" not in m.caps:
            print("warning: no UIDPLUS: this run's messages are left \\Deleted in INBOX", file=sys.stderr)
        leave(m)
        m.delete(q(box))
    else:
        die("unknown helper command " + cmd)
    m.logout()


main()
PY

helper() { python3 "$HELPER" "$@"; }
cleanup() {
  helper cleanup >/dev/null 2>&1 || echo "warning: server cleanup failed" >&2
}

# ---------------------------------------------------------------------------
# the mbsync configuration
FOLDER=$(helper folder) || fail "cannot log in to $HOST:$PORT as $USER_"
esc() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
cat > "$RC" <<RC
IMAPAccount starling
Host $HOST
Port $PORT
User "$(esc "$USER_")"
Pass "$(esc "$PASSWORD")"
SSLType None
AuthMechs LOGIN
Timeout 30

IMAPStore remote
Account starling

MaildirStore local
Path $MAILDIR/
Inbox $MAILDIR/INBOX
SubFolders Verbatim

Channel inbox
Far :remote:INBOX
Near :local:INBOX
Create Both
Expunge Both
SyncState *
Sync All

Channel folder
Far :remote:$FOLDER
Near :local:$FOLDER
Create Both
Expunge Both
SyncState *
Sync All
RC
chmod 600 "$RC"

run_mbsync() {
  echo "=== mbsync run $1" >> "$LOG"
  if ! mbsync -c "$RC" -a >> "$LOG" 2>&1; then
    tail -30 "$LOG" >&2
    fail "mbsync exited non-zero ($1); full log: $LOG"
  fi
}

# files of message N (by Message-ID) in a Maildir folder
files_of() {
  local dir=$1 n=$2
  grep -l -F "Message-ID: <$TOKEN-$n@mbsync.test>" "$dir"/cur/* "$dir"/new/* 2>/dev/null || true
}
one_file() {
  local dir=$1 n=$2 f
  f=$(files_of "$dir" "$n")
  [ -n "$f" ] || fail "message $n not in Maildir $dir"
  [ "$(printf '%s\n' "$f" | wc -l)" -eq 1 ] || fail "message $n is in $dir more than once: $f"
  printf '%s' "$f"
}
flags_of() {
  case "$1" in
    *:2,*) printf '%s' "${1##*:2,}" ;;
    *) printf '' ;;
  esac
}

trap cleanup EXIT
helper seed || fail "seeding the server failed"
ok "seeded server: INBOX and $FOLDER"

# ---- (a) server -> Maildir ----------------------------------------------------
run_mbsync "a: initial"
IN=$MAILDIR/INBOX
FD=$MAILDIR/$FOLDER
[ -d "$IN/cur" ] || fail "no Maildir INBOX at $IN"
[ -d "$FD/cur" ] || fail "mbsync did not create the Maildir folder $FD"
f1=$(one_file "$IN" 1)
f2=$(one_file "$IN" 2)
f3=$(one_file "$FD" 3)
f4=$(one_file "$FD" 4)
[[ "$(flags_of "$f1")" == *F* ]] || fail "\\Flagged message has no F in its file name: $f1"
[[ "$(flags_of "$f2")" != *F* ]] || fail "unflagged message has F: $f2"
[[ "$(flags_of "$f3")" == *S* ]] || fail "\\Seen message has no S in its file name: $f3"
[[ "$(flags_of "$f4")" != *S* ]] || fail "unseen message has S: $f4"
ok "a: server messages in the Maildir with flags (F on 1, S on 3)"

# ---- (b) Maildir -> server ----------------------------------------------------
newfile="$IN/new/$(date +%s).$$_1.$(hostname 2>/dev/null || echo localhost)"
printf 'From: Local <local@example.org>\r\nTo: %s\r\nSubject: added locally\r\nDate: %s\r\nMessage-ID: <%s-5@mbsync.test>\r\n\r\nwritten straight into the Maildir\r\n' \
  "$USER_" "$(date -R)" "$TOKEN" > "$newfile.tmp"
mv "$newfile.tmp" "$newfile"
fl=$(flags_of "$f2")
newfl=$(printf '%sS' "$fl" | fold -w1 | sort -u | tr -d '\n')
case "$f2" in
  *:2,*) mv "$f2" "${f2%:2,*}:2,$newfl" ;;
  *) mv "$f2" "${f2%/*}/../cur/${f2##*/}:2,$newfl" ;;
esac
run_mbsync "b: local changes"
helper check-b || fail "server state after pushing local changes"
[ -n "$(files_of "$IN" 5)" ] || fail "the locally added message vanished from the Maildir"
ok "b: new local message and S flag reached the server"

# ---- (c) server expunge -> Maildir ------------------------------------------
helper expunge || fail "expunging on the server failed"
run_mbsync "c: server expunge"
[ -z "$(files_of "$FD" 4)" ] || fail "message expunged on the server is still in the Maildir: $(files_of "$FD" 4)"
one_file "$FD" 3 >/dev/null
ok "c: message expunged on the server is gone from the Maildir"

echo "mbsync round trip passed (log: $LOG)"
