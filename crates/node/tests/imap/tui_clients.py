#!/usr/bin/env python3
"""Real terminal mail clients against a running server, driven in tmux.

aerc (server-side SORT and THREAD), neomutt (ENABLE UTF8=ACCEPT and
QRESYNC, SELECT with CONDSTORE then QRESYNC from its header cache, IDLE,
STORE, a UTF-8 mailbox name) and mutt (COMPRESS=DEFLATE) each run in a tmux session of their own
through a recording proxy: what the client sent is checked in the proxy's
log, what it shows on the tmux screen, and what it changed with imaplib.
Every wait is bounded; the first failed check exits non-zero with the
screen and the client's commands.
"""
import argparse
import imaplib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--host", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--user", required=True)
p.add_argument("--password", required=True)
p.add_argument("--work", required=True)
args = p.parse_args()

WAIT_SECS = 20
sent = bytearray()  # what clients sent, through the proxy
sent_lock = threading.Lock()


def fail(why, screen=""):
    with sent_lock:
        commands = sent.decode("utf-8", "replace")
    print(f"FAILED: {why}\n--- screen ---\n{screen}\n--- client commands ---\n{commands[-4000:]}")
    sys.exit(1)


def proxy():
    """Listens on a free port; each connection is relayed to the server,
    the client's bytes appended to `sent`. Returns the port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)

    def pump(src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with sent_lock:
                        sent.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accept():
        while True:
            c, _ = lsock.accept()
            u = socket.create_connection((args.host, args.port))
            threading.Thread(target=pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=pump, args=(u, c, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1]


def commands():
    with sent_lock:
        return sent.decode("utf-8", "replace")


def wait_sent(what, needle):
    deadline = time.time() + WAIT_SECS
    while time.time() < deadline:
        if needle in commands():
            return
        time.sleep(0.1)
    fail(f"{what}: the client never sent {needle!r}")


class Tmux:
    """One client in a tmux server of its own (its own socket)."""

    made = 0

    def __init__(self, name, command, env):
        Tmux.made += 1
        self.base = ["tmux", "-L", f"starling-{name}-{os.getpid()}-{Tmux.made}", "-f", "/dev/null"]
        full = " ".join(f"{k}={v}" for k, v in env.items()) + " " + command
        subprocess.run(self.base + ["new-session", "-d", "-x", "160", "-y", "40", full + "; sleep 600"], check=True)

    def screen(self):
        o = subprocess.run(self.base + ["capture-pane", "-p"], capture_output=True, text=True)
        return o.stdout

    def keys(self, *keys):
        subprocess.run(self.base + ["send-keys"] + list(keys), check=True)

    def wait(self, what, test):
        deadline = time.time() + WAIT_SECS
        s = ""
        while time.time() < deadline:
            s = self.screen()
            if test(s):
                return s
            time.sleep(0.2)
        fail(what, s)

    def close(self):
        subprocess.run(self.base + ["kill-server"], capture_output=True)


def imap():
    c = imaplib.IMAP4(args.host, args.port)
    c.login(args.user, args.password)
    return c


def message(subject, sender, day, mid, refs=""):
    head = (
        f"From: {sender}\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, {day} Dec 2025 10:00:00 +0000\r\nMessage-ID: <{mid}@example.org>\r\n"
    )
    if refs:
        head += f"In-Reply-To: <{refs}@example.org>\r\nReferences: <{refs}@example.org>\r\n"
    return (head + f"\r\nbody of {subject}\r\n").encode()


def row_order(screen, words):
    """The screen rows' order of `words` (each must be on one row)."""
    rows = screen.splitlines()
    at = []
    for w in words:
        hits = [i for i, r in enumerate(rows) if w in r]
        if len(hits) != 1:
            return None
        at.append(hits[0])
    return at


work = args.work
port = proxy()

# The mailbox: UID order, date order and subject order all differ.
c = imap()
c.append("INBOX", None, None, message("charlie", "carol@example.org", 1, "m1"))
c.append("INBOX", None, None, message("alpha", "ann@example.org", 3, "m2"))
c.append("INBOX", None, None, message("bravo", "bob@example.org", 2, "m3"))
c.append("INBOX", None, None, message("Re: charlie", "dan@example.org", 4, "m4", refs="m1"))
# A mailbox with a non-ASCII name, made in modified UTF-7 ("Grüße").
c.create("Gr&APwA3w-e")
c.append("Gr&APwA3w-e", None, None, message("umlaut folder", "eve@example.org", 5, "m5"))
c.logout()

# --- aerc: server-side SORT, then THREAD ---------------------------------
if not shutil.which("aerc"):
    fail("aerc is not installed (apt-get install aerc)")
cfg = os.path.join(work, "aerc-config", "aerc")
os.makedirs(cfg, exist_ok=True)
accounts = os.path.join(cfg, "accounts.conf")
with open(accounts, "w") as f:
    f.write(
        f"[test]\nsource = imap+insecure://{args.user}:{args.password}@127.0.0.1:{port}\n"
        "outgoing = /bin/true\ndefault = INBOX\nfrom = alice <alice@example.org>\n"
    )
os.chmod(accounts, 0o600)
for threading_on in (False, True):
    with open(os.path.join(cfg, "aerc.conf"), "w") as f:
        f.write(f"[ui]\nsort = -r subject\nthreading-enabled = {str(threading_on).lower()}\n")
    env = {"XDG_CONFIG_HOME": os.path.join(work, "aerc-config"), "HOME": work}
    t = Tmux("aerc", "aerc", env)
    try:
        if not threading_on:
            wait_sent("aerc sorts on the server", "SORT (REVERSE SUBJECT)")
            s = t.wait("aerc lists four messages", lambda s: all(w in s for w in ("alpha", "bravo", "Re: charlie")))
            # By base subject, reversed: charlie (two), bravo, alpha; ties by arrival.
            at = row_order(s, ["bravo", "alpha"])
            ch = [i for i, r in enumerate(s.splitlines()) if "charlie" in r]
            if at is None or len(ch) != 2 or not (max(ch) < at[0] < at[1]):
                fail("aerc's list is not in the server's SORT (REVERSE SUBJECT) order", s)
        else:
            wait_sent("aerc threads on the server", "THREAD REFERENCES")
            s = t.wait("aerc shows the reply in its thread", lambda s: "dan@example.org" in s and "alpha" in s)
            rows = s.splitlines()
            parent = [i for i, r in enumerate(rows) if "carol@example.org" in r]
            reply = [i for i, r in enumerate(rows) if "dan@example.org" in r]
            # The reply is drawn as a branch ("└─>") right under its parent.
            if len(parent) != 1 or len(reply) != 1 or reply[0] != parent[0] + 1 or "\u2514" not in rows[reply[0]]:
                fail("aerc does not show the reply as a branch under its parent (THREAD REFERENCES)", s)
    finally:
        t.close()

# --- neomutt: UTF8=ACCEPT, CONDSTORE/QRESYNC, IDLE, STORE ------------------
if not shutil.which("neomutt"):
    fail("neomutt is not installed (apt-get install neomutt)")
cache = os.path.join(work, "neomutt-cache")
os.makedirs(cache, exist_ok=True)


def write_muttrc(name, settings):
    """A (neo)mutt config for the server through the proxy: the shared
    settings, then `settings`. Returns its path."""
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(
            f'set folder="imap://{args.user}@127.0.0.1:{port}/"\n'
            f'set imap_pass="{args.password}"\n'
            'set spoolfile="+INBOX"\nset ssl_starttls=no\nset ssl_force_tls=no\n'
            'set record=""\nset postponed=""\n'
            "set sort=date\nset timeout=1\nset mail_check=1\nset wait_key=no\n" + settings
        )
    return path


muttrc = write_muttrc(
    "muttrc",
    f'set imap_condstore=yes\nset imap_qresync=yes\nset imap_idle=yes\nset header_cache="{cache}"\n',
)
env = {"HOME": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
neomutt = f"neomutt -n -F {muttrc}"

t = Tmux("neomutt", neomutt, env)
try:
    wait_sent("neomutt enables UTF-8", "ENABLE UTF8=ACCEPT")
    wait_sent("neomutt enables QRESYNC", "ENABLE QRESYNC")
    wait_sent("neomutt selects with CONDSTORE", 'SELECT "INBOX" (CONDSTORE)')
    s = t.wait("neomutt lists four messages", lambda s: all(w in s for w in ("alpha", "bravo", "Re: charlie")))
    at = row_order(s, ["bravo", "alpha", "Re: charlie"])
    if at is None or not (at[0] < at[1] < at[2]):
        fail("neomutt's date order (bravo on the 2nd, alpha on the 3rd, the reply on the 4th)", s)
    # IDLE: a message appended elsewhere shows up by itself.
    wait_sent("neomutt idles", "IDLE")
    c = imap()
    c.append("INBOX", None, None, message("delta", "dora@example.org", 6, "m6"))
    t.wait("neomutt shows the message appended by another client (IDLE)", lambda s: "delta" in s)
    # Flag the first line (sorted by date: charlie) and sync.
    t.keys("Home")
    t.keys("F")
    t.keys("$")
    wait_sent("neomutt stores the flag", "+FLAGS.SILENT (\\Flagged)")
    deadline = time.time() + WAIT_SECS
    c.select("INBOX")
    while time.time() < deadline:
        typ, data = c.uid("SEARCH", None, "FLAGGED")
        if data[0].split() == [b"1"]:
            break
        time.sleep(0.2)
    else:
        fail(f"the server holds \\Flagged on UID 1 (charlie): flagged UIDs {data}", t.screen())
    # A UTF-8 mailbox name, sent as UTF-8 (UTF8=ACCEPT is on).
    t.keys("c")
    time.sleep(0.5)
    t.keys("C-u")
    t.keys("-l", "=Grüße")
    t.keys("Enter")
    wait_sent("neomutt opens the mailbox by its UTF-8 name", 'SELECT "Grüße"')
    t.wait("neomutt shows the message in Grüße", lambda s: "umlaut folder" in s)
    t.keys("q")
    time.sleep(0.5)
    t.keys("y")
finally:
    t.close()

# Changes while neomutt is away; back, it resynchronises (QRESYNC).
c.select("INBOX")
c.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
c.expunge()
c.logout()
with sent_lock:
    sent.clear()
t = Tmux("neomutt2", neomutt, env)
try:
    # From its header cache: the changes since its MODSEQ, expunges as
    # VANISHED (RFC 7162 section 3.2.6), not every message again.
    wait_sent("neomutt resynchronises from its cache", "(FLAGS) (CHANGEDSINCE ")
    wait_sent("neomutt asks for expunges as VANISHED", " VANISHED)")
    s = t.wait("neomutt shows the expunge made while it was away", lambda s: "alpha" in s and "delta" in s)
    if "bravo" in s:
        fail("neomutt still shows bravo, expunged while it was away", s)
finally:
    t.close()

# --- mutt: COMPRESS=DEFLATE ---------------------------------------------------
# Debian's neomutt has no zlib; its mutt has (imap_deflate). After COMPRESS
# both directions are deflated, so the proxy's log ends there: what mutt
# shows and what its STORE changed say that both directions decompress.
if not shutil.which("mutt"):
    fail("mutt is not installed (apt-get install mutt)")
muttrc2 = write_muttrc("muttrc-deflate", 'set imap_deflate=yes\nset imap_idle=no\nset header_cache=""\n')
with sent_lock:
    sent.clear()
c = imap()
c.select("INBOX")
typ, data = c.uid("SEARCH", None, "SUBJECT", "delta")
delta = data[0].split()
if len(delta) != 1:
    fail(f"one delta message before mutt: {data}")
t = Tmux("mutt", f"mutt -n -F {muttrc2}", env)
try:
    wait_sent("mutt asks for compression", "COMPRESS DEFLATE")
    s = t.wait("mutt lists the messages over the compressed stream", lambda s: "alpha" in s and "delta" in s)
    # The newest by date (delta) is the last line: flag it and sync.
    t.keys("End")
    t.keys("F")
    t.keys("$")
    deadline = time.time() + WAIT_SECS
    while time.time() < deadline:
        c.noop()
        typ, data = c.uid("SEARCH", None, "FLAGGED")
        if delta[0] in data[0].split():
            break
        time.sleep(0.2)
    else:
        fail(f"the server holds \\Flagged on delta (UID {delta[0]}) from mutt's compressed STORE: {data}", t.screen())
    after = commands().split("COMPRESS DEFLATE", 1)[1]
    if "FLAGS" in after:
        fail("mutt's commands after COMPRESS went uncompressed", t.screen())
finally:
    t.close()
c.logout()
print("ok aerc (SORT, THREAD), neomutt (UTF8=ACCEPT, CONDSTORE, QRESYNC, IDLE, STORE, a UTF-8 mailbox name), mutt (COMPRESS=DEFLATE)")
