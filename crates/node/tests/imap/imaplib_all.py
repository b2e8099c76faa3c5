#!/usr/bin/env python3
"""End-to-end IMAP client checks against a running server (Python 3.11 stdlib only).

Usage:
  imaplib_all.py --host H --port P --tls-port T --user U --password PW
                 [--starttls] [--expect-loopback-plaintext] [--keep-going]

  --port        plain IMAP port (STARTTLS is tried there)
  --tls-port    implicit-TLS port (certificate is not verified: self-signed)
  --starttls    log every plain-port session in over STARTTLS (automatic when
                the server advertises LOGINDISABLED before TLS)
  --expect-loopback-plaintext
                assert that the plain port allows LOGIN / AUTHENTICATE PLAIN
                in clear text (no LOGINDISABLED), as on loopback
  --keep-going  run every check even after a failure (later checks may then
                fail as a consequence); the default stops at the first one
  --verbose     print every protocol line as it crosses the wire

Each check prints "ok <name>"; the first failure prints "FAIL <name>: why",
the last protocol lines of every connection, and exits 1.  Everything is done
under a fresh top-level mailbox t<random> (inside the personal namespace),
which is deleted at the end.  INBOX is only selected, never written to.

Assertions are on RFC-mandated behaviour (RFC 3501, 2177, 2342, 2971, 4315,
4959, 5161, 5258, 5819, 6154, 6851, 7162, 7888, 4731, 4616), never on a
server's human-readable text.  A few places rely on a SHOULD that every
mainstream server implements; they are marked "SHOULD" in a comment.

Validated against Dovecot 2.3.19 imapd (maildir, LAYOUT=fs, "/" separator):
all checks pass there.  Where Dovecot is lenient or needs configuration:
  * append_oversize_literal: Dovecot has no message size limit by default and
    answers "+ OK" to {999999999}; with the quota plugin's
    quota_max_mail_size it answers NO [LIMIT] without a continuation.  The
    size used is APPENDLIMIT+1 when the server advertises APPENDLIMIT=n.
  * examine: Dovecot answers STORE in a read-only mailbox with "OK Store
    ignored" instead of NO; accepted because nothing changes (checked).
  * STATUS on the selected mailbox: Dovecot answers from the session's stale
    view ([CLIENTBUG]); the checks UNSELECT before such a STATUS.
  * starttls_no_command_injection: Dovecot treats the pipelined plaintext as
    TLS input and drops the connection: accepted (nothing was executed).
  * QRESYNC with known-uids: Dovecot only reports FETCH for known UIDs, so
    only VANISHED is asserted in that variant.
  * Dovecot accepts "STORE 1 +FLAGS" with no flag (grammar needs one); that
    input is not among the BAD checks.
"""

import argparse
import base64
import collections
import datetime
import email.utils
import imaplib
import queue
import random
import re
import ssl
import sys
import threading
import time
import traceback

# ---------------------------------------------------------------------------
# transcript of the protocol, printed on failure

TRANSCRIPT = collections.deque(maxlen=80)
VERBOSE = False


def _note(line):
    TRANSCRIPT.append(line)
    if VERBOSE:
        print("   | " + line, flush=True)


def _clip(b, n=220):
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogateescape")
    s = b.decode("utf-8", "backslashreplace").rstrip("\r\n")
    return s if len(s) <= n else s[:n] + "...(%d bytes)" % len(b)


class Recording:
    """Mixin for imaplib classes: records what crosses the wire."""

    def __init__(self, *a, label="?", **kw):
        self.label = label
        super().__init__(*a, **kw)

    def send(self, data):
        lines = data.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for i, line in enumerate(lines[:12]):
            _note("%s C: %s" % (self.label, _clip(line)))
        if len(lines) > 12:
            _note("%s C: ...(%d more lines)" % (self.label, len(lines) - 12))
        super().send(data)

    def readline(self):
        line = super().readline()
        _note("%s S: %s" % (self.label, _clip(line) if line else "<EOF>"))
        return line

    def read(self, size):
        data = super().read(size)
        _note("%s S: <literal %d bytes> %s" % (self.label, size, _clip(data[:80], 80)))
        return data


class PlainIMAP(Recording, imaplib.IMAP4):
    pass


class TlsIMAP(Recording, imaplib.IMAP4_SSL):
    pass


def noverify_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------------------
# failures

class Failure(Exception):
    pass


def expect(cond, msg, *fmt):
    if not cond:
        raise Failure(msg % fmt if fmt else msg)


def expect_eq(got, want, what):
    if got != want:
        raise Failure("%s: got %r, want %r" % (what, got, want))


# ---------------------------------------------------------------------------
# response parsing

class Atom(str):
    """An unquoted atom (numbers, flags, NIL is turned into None)."""


def text(v):
    """Normalise a string-ish token (atom, quoted, literal) to str."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return str(v)


def raw(v):
    """Normalise a string-ish token to bytes (for byte-exact comparisons)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    return str(v).encode("utf-8", "surrogateescape")


def tokenize(buf, lits):
    """Parse IMAP data: atoms, "quoted", literals (\\0 placeholders), (lists).

    Atoms may contain a [...] section with spaces (BODY[HEADER.FIELDS (A B)])
    and a trailing <n> partial marker.
    """
    lits = list(lits)
    out = []
    stack = [out]
    i, n = 0, len(buf)
    while i < n:
        c = buf[i]
        if c == 0x20:
            i += 1
        elif c == 0x28:  # (
            new = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif c == 0x29:  # )
            if len(stack) > 1:
                stack.pop()
            i += 1
        elif c == 0x22:  # "
            i += 1
            s = bytearray()
            while i < n and buf[i] != 0x22:
                if buf[i] == 0x5C and i + 1 < n:
                    i += 1
                s.append(buf[i])
                i += 1
            i += 1
            stack[-1].append(bytes(s).decode("utf-8", "surrogateescape"))
        elif c == 0:
            stack[-1].append(lits.pop(0) if lits else b"")
            i += 1
        else:
            j = i
            while j < n and buf[j] not in (0x20, 0x28, 0x29, 0, 0x22):
                if buf[j] == 0x5B:  # [ ... ] may hold spaces and parens
                    depth = 0
                    while j < n:
                        if buf[j] == 0x5B:
                            depth += 1
                        elif buf[j] == 0x5D:
                            depth -= 1
                            if depth == 0:
                                break
                        j += 1
                j += 1
            a = buf[i:j].decode("utf-8", "surrogateescape")
            stack[-1].append(None if a.upper() == "NIL" else Atom(a))
            i = j
    return out


STATUS_RE = re.compile(rb"^(\S+) (OK|NO|BAD|BYE|PREAUTH)(?: (.*))?$", re.I | re.S)
NUMDATA_RE = re.compile(rb"^\* (\d+) (\S+) ?(.*)$", re.S)
DATA_RE = re.compile(rb"^\* (\S+) ?(.*)$", re.S)


class Resp:
    """One server response.

    kind: 'cont' | 'status' | 'data'; tag: '*', '+' or the command tag;
    name: upper-cased OK/NO/BAD/BYE/PREAUTH or data name (EXISTS, FETCH, ...);
    num: the number of '* n NAME'; code: (NAME, [args]) of a [response code];
    text: human text; args: parsed tokens.
    """

    def __init__(self, parts):
        self.raw = b"".join(t + (b"{%d}\r\n" % len(l) + l if l is not None else b"") for t, l in parts)
        self.num = None
        self.code = None
        self.text = ""
        self.args = []
        first = parts[0][0]
        if first.startswith(b"+"):
            self.kind, self.tag, self.name = "cont", "+", "+"
            self.text = first[1:].lstrip(b" ").decode("utf-8", "replace")
            return
        m = STATUS_RE.match(first) if len(parts) == 1 else None
        if m:
            self.kind = "status"
            self.tag = m.group(1).decode("ascii", "replace")
            self.name = m.group(2).decode().upper()
            rest = m.group(3) or b""
            if rest.startswith(b"["):
                end = rest.find(b"]")
                if end < 0:
                    end = len(rest)
                toks = tokenize(rest[1:end], [])
                if toks:
                    self.code = (str(toks[0]).upper(), toks[1:])
                rest = rest[end + 1:].lstrip(b" ")
            self.text = rest.decode("utf-8", "replace")
            return
        self.kind = "data"
        self.tag = first.split(b" ", 1)[0].decode("ascii", "replace")
        joined = b"\0".join(t for t, _ in parts)
        lits = [l for _, l in parts if l is not None]
        m = NUMDATA_RE.match(joined)
        if m:
            self.num = int(m.group(1))
            self.name = m.group(2).decode("ascii", "replace").upper()
            self.args = tokenize(m.group(3), lits)
            return
        m = DATA_RE.match(joined)
        if m:
            self.name = m.group(1).decode("ascii", "replace").upper()
            self.args = tokenize(m.group(2), lits)
        else:
            self.name = "?"
            self.args = tokenize(joined, lits)

    def __repr__(self):
        return _clip(self.raw, 300)


class Result:
    def __init__(self, tag, untagged, final):
        self.tag = tag
        self.untagged = untagged
        self.final = final
        self.status = final.name
        self.code = final.code

    def of(self, name):
        return [r for r in self.untagged if r.name == name]

    def code_name(self):
        return self.code[0] if self.code else None

    def untagged_codes(self, name):
        return [r.code for r in self.untagged if r.kind == "status" and r.code and r.code[0] == name]

    def fetches(self):
        """[(seq, {ITEM: value})] in arrival order."""
        out = []
        for r in self.of("FETCH"):
            expect(r.args and isinstance(r.args[0], list), "malformed FETCH response: %r" % r)
            out.append((r.num, items(r.args[0])))
        return out

    def fetch_by_seq(self):
        d = {}
        for seq, it in self.fetches():
            d.setdefault(seq, {}).update(it)
        return d

    def fetch_by_uid(self):
        d = {}
        for seq, it in self.fetches():
            expect("UID" in it, "FETCH response without UID: %r" % it)
            d.setdefault(int(it["UID"]), {}).update(it)
        return d

    def __repr__(self):
        return "%s %s" % (self.tag, self.final)


def items(lst):
    d = {}
    for k, v in zip(lst[0::2], lst[1::2]):
        d[re.sub(r"\s+", " ", str(k).upper())] = v
    return d


def parse_set(s):
    """Expand a sequence/UID set like '1:3,7' into an ordered list."""
    out = []
    for part in str(s).split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            lo, hi = min(a, b), max(a, b)
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    return out


def fmt_set(nums):
    return ",".join(str(n) for n in nums)


def flagset(v):
    """Flags as a lower-cased set, \\Recent removed (it is session-specific)."""
    return {str(f).lower() for f in (v or [])} - {"\\recent"}


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_internaldate(s):
    return datetime.datetime.strptime(text(s).strip(), "%d-%b-%Y %H:%M:%S %z")


# ---------------------------------------------------------------------------
# connection wrapper: imaplib does connect / TLS / login; raw commands are
# sent on its socket and read back through its (recording) reader.

class Conn:
    counter = 0

    def __init__(self, imap, label):
        self.imap = imap
        self.label = label
        self.n = 0
        self.closed = False

    @property
    def caps(self):
        return {c.upper() for c in self.imap.capabilities}

    def refresh_caps(self):
        r = self.ok("CAPABILITY")
        caps = r.of("CAPABILITY")
        expect(len(caps) == 1, "CAPABILITY: want exactly one untagged CAPABILITY")
        self.imap.capabilities = tuple(str(c).upper() for c in caps[0].args)
        return self.caps

    def next_tag(self):
        self.n += 1
        return "%s%04d" % (self.label, self.n)

    def send(self, data):
        self.imap.send(data)

    def read(self):
        parts = []
        while True:
            line = self.imap.readline()
            if not line:
                self.closed = True
                raise Failure("%s: connection closed by server" % self.label)
            if not line.endswith(b"\r\n"):
                raise Failure("%s: line not terminated by CRLF: %r" % (self.label, line[-40:]))
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                lit = self.imap.read(int(m.group(1)))
                parts.append((line[:m.start()], lit))
            else:
                parts.append((line[:-2], None))
                return Resp(parts)

    def collect(self, tag, untagged=None):
        untagged = untagged if untagged is not None else []
        while True:
            r = self.read()
            if r.kind == "status" and r.tag == tag:
                return Result(tag, untagged, r)
            if r.kind == "status" and r.tag != "*":
                raise Failure("%s: response with unexpected tag %r" % (self.label, r.tag))
            untagged.append(r)
            if r.name == "BYE" and r.tag == "*":
                # the server may still send the tagged reply (LOGOUT); keep reading
                pass

    def cmd(self, *pieces, plus=False):
        """Send one tagged command; bytes pieces are sent as literals
        (synchronizing unless plus=True).  Returns a Result."""
        tag = self.next_tag()
        out = [tag.encode() + b" "]
        untagged = []
        for p in pieces:
            if isinstance(p, (bytes, bytearray)):
                out.append(b"{%d%s}\r\n" % (len(p), b"+" if plus else b""))
                if not plus:
                    self.send(b"".join(out))
                    out = []
                    while True:
                        r = self.read()
                        if r.kind == "cont":
                            break
                        if r.kind == "status" and r.tag == tag:
                            return Result(tag, untagged, r)
                        untagged.append(r)
                out.append(bytes(p))
            else:
                out.append(p.encode("utf-8"))
        out.append(b"\r\n")
        self.send(b"".join(out))
        return self.collect(tag, untagged)

    def ok(self, *pieces, **kw):
        r = self.cmd(*pieces, **kw)
        expect(r.status == "OK", "%s: want OK, got %r" % (_cmdname(pieces), r.final))
        return r

    def not_ok(self, *pieces, allowed=("NO", "BAD"), **kw):
        r = self.cmd(*pieces, **kw)
        expect(r.status in allowed, "%s: want %s, got %r" % (_cmdname(pieces), "/".join(allowed), r.final))
        return r

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.imap.sock.settimeout(3)
            self.cmd("LOGOUT")
        except Exception:
            pass
        try:
            self.imap.shutdown()
        except Exception:
            pass


def _cmdname(pieces):
    s = "".join(p if isinstance(p, str) else "{literal}" for p in pieces)
    return s[:120]


# ---------------------------------------------------------------------------
# test context

class Ctx:
    def __init__(self, args):
        self.args = args
        self.conns = []
        self.root = None          # t<random> under the personal namespace
        self.delim = "/"
        self.use_starttls = args.starttls
        self.prelogin_caps = set()
        self.caps = set()
        self.uids = {}            # mailbox -> list of UIDs appended
        self.msgs = {}            # (mailbox, uid) -> bytes appended

    def mb(self, *parts):
        return self.delim.join((self.root,) + parts)

    def new_imap(self, label, mode="plain"):
        a = self.args
        if mode == "implicit":
            imap = TlsIMAP(a.host, a.tls_port, ssl_context=noverify_context(), timeout=30, label=label)
        else:
            imap = PlainIMAP(a.host, a.port, timeout=30, label=label)
            if mode == "starttls":
                imap.starttls(ssl_context=noverify_context())
        c = Conn(imap, label)
        self.conns.append(c)
        return c

    def connect(self, label, login=True):
        mode = "starttls" if self.use_starttls else "plain"
        c = self.new_imap(label, mode)
        if login:
            c.ok("LOGIN", " ", q(self.args.user), " ", q(self.args.password))
            c.imap.state = "AUTH"
        return c

    def append(self, conn, mailbox, data, flags=None, date=None):
        """APPEND with a synchronizing literal; returns the APPENDUID uid."""
        pieces = ["APPEND " + q(mailbox)]
        if flags is not None:
            pieces.append(" (" + " ".join(flags) + ")")
        if date is not None:
            pieces.append(" " + imaplib.Time2Internaldate(date))
        pieces.append(" ")
        pieces.append(data)
        r = conn.ok(*pieces)
        uid = appenduid(r)
        self.uids.setdefault(mailbox, []).append(uid)
        self.msgs[(mailbox, uid)] = data
        return uid


def appenduid(r):
    expect(r.code and r.code[0] == "APPENDUID", "APPEND: tagged OK lacks [APPENDUID]: %r" % r.final)
    expect(len(r.code[1]) == 2, "APPENDUID wants 2 arguments: %r" % r.final)
    return int(r.code[1][1])


def copyuid(r):
    """COPYUID from the tagged or an untagged OK (MOVE sends it untagged)."""
    codes = [r.code] if r.code and r.code[0] == "COPYUID" else []
    codes += r.untagged_codes("COPYUID")
    expect(len(codes) == 1, "want exactly one [COPYUID] response code, got %r" % codes)
    args = codes[0][1]
    expect(len(args) == 3, "COPYUID wants 3 arguments: %r" % (args,))
    return int(args[0]), parse_set(args[1]), parse_set(args[2])


def search_set(r):
    s = r.of("SEARCH")
    expect(len(s) == 1, "want exactly one untagged SEARCH, got %d" % len(s))
    nums = [int(a) for a in s[0].args if not isinstance(a, list)]
    return set(nums)


def list_entries(r, name="LIST"):
    """[(attrs-lowercase-set, delimiter, mailbox, ext)]"""
    out = []
    for resp in r.of(name):
        a = resp.args
        expect(len(a) >= 3 and isinstance(a[0], list), "malformed %s response: %r" % (name, resp))
        out.append(({str(x).lower() for x in a[0]}, text(a[1]), text(a[2]), a[3] if len(a) > 3 else None))
    return out


def status_items(r, mailbox=None):
    st = r.of("STATUS")
    if mailbox is not None:
        st = [s for s in st if text(s.args[0]) == mailbox]
    expect(len(st) == 1, "want one STATUS response%s, got %d" % (" for " + mailbox if mailbox else "", len(st)))
    d = items(st[0].args[1])
    return {k: int(v) for k, v in d.items()}


def select_info(r):
    """Collect the parts of a SELECT/EXAMINE response."""
    info = {"flags": None, "exists": None, "recent": None, "codes": {}}
    for u in r.untagged:
        if u.name == "FLAGS":
            info["flags"] = u.args[0]
        elif u.name == "EXISTS":
            info["exists"] = u.num
        elif u.name == "RECENT":
            info["recent"] = u.num
        elif u.kind == "status" and u.code:
            info["codes"][u.code[0]] = u.code[1]
    return info


# ---------------------------------------------------------------------------
# messages with known headers, dates, sizes and bodies

UTC = datetime.timezone.utc


def d(y, m, day, h=12):
    return datetime.datetime(y, m, day, h, 0, 0, tzinfo=UTC)


def build(headers, body):
    head = "".join("%s: %s\r\n" % (k, v) for k, v in headers)
    return (head + "\r\n" + body).encode("utf-8")


BOUNDARY = "=_b0undary_42"
M4_PART1 = "Hello Alice,\r\nsee the attached xylophone sample.\r\n"
M4_PART2_MIME = ('Content-Type: application/octet-stream; name="x.bin"\r\n'
                 "Content-Transfer-Encoding: base64\r\n"
                 'Content-Disposition: attachment; filename="x.bin"\r\n\r\n')
M4_PART2 = base64.b64encode(bytes(range(32))).decode()
M4_BODY = ("This is a multi-part message in MIME format.\r\n"
           "--" + BOUNDARY + "\r\n"
           "Content-Type: text/plain; charset=us-ascii\r\n"
           "Content-Transfer-Encoding: 7bit\r\n\r\n"
           + M4_PART1 +
           "\r\n--" + BOUNDARY + "\r\n"
           + M4_PART2_MIME + M4_PART2 +
           "\r\n--" + BOUNDARY + "--\r\n")

# (headers, body, flags, internal date); sent dates differ from internal dates
SEARCH_MSGS = [
    ([("From", "Alice <alice@example.org>"), ("To", "bob@example.net"),
      ("Cc", "Carol <carol@example.com>"), ("Subject", "Quarterly report"),
      ("Date", email.utils.format_datetime(d(2022, 1, 3))), ("Message-ID", "<m1@example.org>"),
      ("X-Tracking", "alpha-1")],
     "The quarterly numbers are attached.\r\nregards\r\n",
     ["\\Seen", "\\Answered"], d(2022, 1, 5)),
    ([("From", "Bob <bob@example.net>"), ("To", "alice@example.org"),
      ("Bcc", "dave@example.com"), ("Subject", "Lunch plans"),
      ("Date", email.utils.format_datetime(d(2022, 2, 15))), ("Message-ID", "<m2@example.net>")],
     "Shall we try the new noodle place?\r\n",
     ["\\Flagged", "$Important"], d(2022, 2, 16)),
    ([("From", "Carol <carol@example.com>"), ("To", "alice@example.org"),
      ("Reply-To", "Team <team@example.com>"), ("Subject", "Re: Quarterly report"),
      ("Date", email.utils.format_datetime(d(2022, 3, 1))), ("Message-ID", "<m3@example.com>"),
      ("In-Reply-To", "<m1@example.org>")],
     "".join("zebra %03d zebra zebra zebra zebra zebra zebra\r\n" % i for i in range(60)),
     ["\\Draft", "\\Deleted"], d(2022, 3, 1)),
    ([("From", "Dave <dave@example.com>"), ("To", "Alice <alice@example.org>"),
      ("Subject", "Photos"), ("Date", email.utils.format_datetime(d(2022, 4, 9))),
      ("Message-ID", "<m4@example.com>"), ("X-Tracking", "beta-4"), ("MIME-Version", "1.0"),
      ("Content-Type", 'multipart/mixed; boundary="%s"' % BOUNDARY)],
     M4_BODY, [], d(2022, 4, 10)),
    ([("From", "Erin <erin@example.com>"), ("To", "frank@example.net"), ("Subject", "Misc"),
      ("Date", email.utils.format_datetime(d(2022, 5, 19))), ("Message-ID", "<m5@example.com>")],
     "plain note\r\n", [], d(2022, 5, 20)),
]


def simple_msg(n, subject=None):
    return build([("From", "Test <test@example.org>"), ("To", "test@example.org"),
                  ("Subject", subject or "message %d" % n),
                  ("Date", email.utils.format_datetime(d(2023, 1, 1 + n % 28))),
                  ("Message-ID", "<s%d.%d@example.org>" % (n, random.randrange(10**9)))],
                 "body of message %d\r\n" % n)


# ---------------------------------------------------------------------------
# checks

CHECKS = []


def check(fn):
    CHECKS.append((fn.__name__.removeprefix("check_"), fn))
    return fn


REQUIRED_CAPS = ["IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "LITERAL+",
                 "ENABLE", "NAMESPACE", "ID", "UNSELECT", "SPECIAL-USE", "ESEARCH", "SASL-IR",
                 "AUTH=PLAIN", "LIST-EXTENDED", "LIST-STATUS", "STARTTLS"]


@check
def check_greeting_and_prelogin_capability(ctx):
    c = ctx.new_imap("G", "plain")
    expect(c.imap.welcome.startswith(b"* OK"), "greeting is not '* OK': %r" % c.imap.welcome)
    caps = c.refresh_caps()
    ctx.prelogin_caps = caps
    expect("IMAP4REV1" in caps, "IMAP4rev1 not advertised before login")
    expect("STARTTLS" in caps, "STARTTLS not advertised on the plain port")
    if "LOGINDISABLED" in caps:
        expect(not ctx.args.expect_loopback_plaintext,
               "LOGINDISABLED advertised in clear text but --expect-loopback-plaintext given")
        ctx.use_starttls = True
        # RFC 3501 6.2.3: with LOGINDISABLED the server rejects LOGIN
        c.not_ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    else:
        expect("AUTH=PLAIN" in caps, "AUTH=PLAIN not advertised before login")
    if ctx.args.expect_loopback_plaintext:
        expect("AUTH=PLAIN" in caps, "AUTH=PLAIN not advertised in clear text")
        c.ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
        c.ok("NOOP")
    c.close()


@check
def check_login_wrong_password(ctx):
    c = ctx.connect("W", login=False)
    c.not_ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password + "-wrong"), allowed=("NO",))
    # still usable, still not authenticated
    c.ok("NOOP")
    c.ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    c.ok("NOOP")
    c.close()


@check
def check_login(ctx):
    ctx.A = ctx.connect("A")
    ctx.A.ok("NOOP")


@check
def check_capability(ctx):
    caps = ctx.A.refresh_caps()
    ctx.caps = caps
    # AUTH=/SASL-IR/STARTTLS only matter before login; servers may drop them after
    have = caps | ctx.prelogin_caps
    missing = [c for c in REQUIRED_CAPS if c not in have]
    expect(not missing, "capabilities missing: %s (have %s)" % (missing, sorted(have)))
    for c in ("SASL-IR", "STARTTLS"):
        expect(c in ctx.prelogin_caps, "%s must be advertised before login" % c)


@check
def check_authenticate_plain_sasl_ir(ctx):
    u, p = ctx.args.user, ctx.args.password
    c = ctx.connect("I", login=False)
    bad = base64.b64encode(b"\0" + u.encode() + b"\0" + p.encode() + b"-wrong").decode()
    c.not_ok("AUTHENTICATE PLAIN " + bad, allowed=("NO",))
    good = base64.b64encode(b"\0" + u.encode() + b"\0" + p.encode()).decode()
    r = c.cmd("AUTHENTICATE PLAIN " + good)
    expect(not [x for x in r.untagged if x.kind == "cont"], "continuation sent despite SASL-IR initial response")
    expect(r.status == "OK", "AUTHENTICATE PLAIN (SASL-IR): %r" % r.final)
    c.ok("SELECT INBOX")
    c.close()


@check
def check_authenticate_plain_continuation(ctx):
    u, p = ctx.args.user, ctx.args.password
    # through imaplib (which always waits for the "+" continuation)
    c = ctx.connect("J", login=False)
    typ, _ = c.imap.authenticate("PLAIN", lambda _chal: b"\0" + u.encode() + b"\0" + p.encode())
    expect(typ == "OK", "imaplib AUTHENTICATE PLAIN: %s" % typ)
    c.ok("SELECT INBOX")
    c.close()
    # by hand: "+" with an empty challenge, then the response line
    c = ctx.connect("K", login=False)
    tag = c.next_tag()
    c.send(tag.encode() + b" AUTHENTICATE PLAIN\r\n")
    r = c.read()
    expect(r.kind == "cont", "want '+' continuation, got %r" % r)
    expect(r.text.strip() == "", "PLAIN's first challenge must be empty, got %r" % r.text)
    c.send(base64.b64encode(b"\0" + u.encode() + b"\0" + p.encode()) + b"\r\n")
    res = c.collect(tag)
    expect(res.status == "OK", "AUTHENTICATE PLAIN (continuation): %r" % res.final)
    c.close()
    # RFC 3501 6.2.2: "*" cancels; the server MUST answer tagged BAD
    c = ctx.connect("L", login=False)
    tag = c.next_tag()
    c.send(tag.encode() + b" AUTHENTICATE PLAIN\r\n")
    r = c.read()
    expect(r.kind == "cont", "want '+' continuation, got %r" % r)
    c.send(b"*\r\n")
    res = c.collect(tag)
    expect_eq(res.status, "BAD", "AUTHENTICATE cancelled with '*'")
    c.ok("NOOP")
    c.close()


@check
def check_starttls(ctx):
    c = ctx.new_imap("T", "plain")
    c.refresh_caps()
    typ, _ = c.imap.starttls(ssl_context=noverify_context())
    expect(typ == "OK", "STARTTLS: %s" % typ)
    expect(isinstance(c.imap.sock, ssl.SSLSocket) and c.imap.sock.version(), "no TLS after STARTTLS")
    caps = c.refresh_caps()  # RFC 3501 6.2.1: capabilities must be re-read after TLS
    expect("LOGINDISABLED" not in caps, "LOGINDISABLED still advertised over TLS")
    expect("AUTH=PLAIN" in caps, "AUTH=PLAIN not advertised over TLS")
    c.not_ok("STARTTLS")  # no TLS inside TLS
    c.ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    c.ok("SELECT INBOX")
    c.close()


@check
def check_starttls_no_command_injection(ctx):
    # Commands pipelined after STARTTLS in clear text must not be run inside
    # the TLS session (CVE-2011-0411 class).  Refusing/closing is also fine.
    c = ctx.new_imap("U", "plain")
    c.send(b"U1 STARTTLS\r\nU2 NOOP\r\n")
    first = c.read()
    expect(first.tag == "U1" and first.name == "OK", "STARTTLS: %r" % first)
    try:
        c.imap.sock = noverify_context().wrap_socket(c.imap.sock, server_hostname=ctx.args.host)
    except (ssl.SSLError, OSError):
        print("   (server refused TLS after pipelined input: acceptable)")
        c.closed = True
        return
    c.imap.file = c.imap.sock.makefile("rb")
    res = c.cmd("NOOP")
    expect(res.status == "OK", "NOOP over TLS: %r" % res.final)
    expect(not [r for r in res.untagged if r.tag == "U2"], "injected plaintext command U2 was executed over TLS")
    c.close()


@check
def check_implicit_tls(ctx):
    c = ctx.new_imap("S", "implicit")
    expect(c.imap.welcome.startswith(b"* OK"), "greeting over TLS: %r" % c.imap.welcome)
    expect(c.imap.sock.version(), "no TLS version on the implicit-TLS port")
    caps = c.refresh_caps()
    expect("IMAP4REV1" in caps, "IMAP4rev1 not advertised over implicit TLS")
    expect("LOGINDISABLED" not in caps, "LOGINDISABLED advertised inside implicit TLS")
    c.not_ok("STARTTLS")  # no TLS inside TLS
    c.ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    c.ok("EXAMINE INBOX")
    c.close()


@check
def check_namespace(ctx):
    r = ctx.A.ok("NAMESPACE")
    ns = r.of("NAMESPACE")
    expect(len(ns) == 1 and len(ns[0].args) == 3, "want one NAMESPACE with 3 parts: %r" % ns)
    personal = ns[0].args[0]
    for part in ns[0].args:
        expect(part is None or (isinstance(part, list) and all(isinstance(e, list) and len(e) >= 2 for e in part)),
               "malformed namespace part %r" % (part,))
    expect(personal, "no personal namespace")
    prefix, delim = text(personal[0][0]), text(personal[0][1])
    expect_eq(delim, "/", "personal namespace hierarchy delimiter")
    ctx.delim = delim
    ctx.root = prefix + "t%08x" % random.getrandbits(32)
    print("   (test mailbox root %s)" % ctx.root)


@check
def check_id(ctx):
    r = ctx.A.ok('ID ("name" "starling-imaplib-test" "version" "1")')
    ids = r.of("ID")
    expect(len(ids) == 1, "want exactly one untagged ID")
    v = ids[0].args[0] if ids[0].args else None
    expect(v is None or (isinstance(v, list) and len(v) % 2 == 0), "ID response must be NIL or field/value pairs")
    ctx.A.ok("ID NIL")


@check
def check_enable(ctx):
    c = ctx.connect("E")
    r = c.ok("ENABLE CONDSTORE QRESYNC")
    en = {str(a).upper() for e in r.of("ENABLED") for a in e.args}
    expect({"CONDSTORE", "QRESYNC"} <= en, "ENABLED lists %s" % sorted(en))
    r = c.ok("ENABLE X-STARLING-NO-SUCH-EXTENSION")
    en = {str(a).upper() for e in r.of("ENABLED") for a in e.args}
    expect("X-STARLING-NO-SUCH-EXTENSION" not in en, "unknown extension reported as enabled")
    c.close()


@check
def check_noop_and_check(ctx):
    ctx.A.ok("NOOP")
    ctx.A.ok("EXAMINE INBOX")
    ctx.A.ok("CHECK")
    ctx.A.ok("NOOP")
    ctx.A.ok("UNSELECT")


# ---- mailboxes ------------------------------------------------------------

@check
def check_list_delimiter(ctx):
    r = ctx.A.ok('LIST "" ""')
    e = list_entries(r)
    expect(len(e) == 1, "LIST \"\" \"\" wants one response")
    expect_eq(e[0][1], "/", "hierarchy delimiter")


@check
def check_create(ctx):
    A = ctx.A
    for name in [ctx.root] + [ctx.mb(x) for x in
                              ("search", "store", "dest", "exp", "idle", "qr", "misc", "sub", "cs")]:
        A.ok("CREATE " + q(name))
    A.not_ok("CREATE " + q(ctx.mb("search")), allowed=("NO",))
    A.not_ok("CREATE INBOX", allowed=("NO",))
    # nested: superiors are created as needed (RFC 3501 6.3.3, SHOULD)
    A.ok("CREATE " + q(ctx.mb("a", "b", "c")))
    # trailing delimiter: declares intent to create inferiors
    A.ok("CREATE " + q(ctx.mb("x") + "/"))
    r = A.ok("LIST " + q("") + " " + q(ctx.mb("*")))
    names = {e[2] for e in list_entries(r)}
    for want in [ctx.mb("a"), ctx.mb("a", "b"), ctx.mb("a", "b", "c"), ctx.mb("x"), ctx.mb("search")]:
        expect(want in names, "%s missing from LIST (have %s)" % (want, sorted(names)))
    r = A.ok("STATUS " + q(ctx.mb("a", "b", "c")) + " (MESSAGES)")
    expect_eq(status_items(r)["MESSAGES"], 0, "messages in a new mailbox")


@check
def check_list_wildcards(ctx):
    A = ctx.A
    r = A.ok('LIST "" ' + q(ctx.mb("%")))
    pct = {e[2] for e in list_entries(r)}
    r = A.ok('LIST "" ' + q(ctx.mb("*")))
    star = {e[2] for e in list_entries(r)}
    expect(ctx.mb("a", "b", "c") in star, "* must match across levels")
    expect(ctx.mb("a", "b") not in pct and ctx.mb("a", "b", "c") not in pct, "% must not match across levels")
    expect({ctx.mb("a"), ctx.mb("search"), ctx.mb("x")} <= pct, "%% misses direct children: %s" % sorted(pct))
    expect(all(n.startswith(ctx.root + "/") for n in star), "LIST returned names outside the pattern")
    r = A.ok('LIST "" ' + q(ctx.root))
    expect_eq([e[2] for e in list_entries(r)], [ctx.root], "LIST of one exact name")
    r = A.ok('LIST "" ' + q(ctx.mb("no-such-*")))
    expect_eq(list_entries(r), [], "LIST with no match")
    r = A.ok('LIST "" %')
    top = {e[2].upper() if e[2].upper() == "INBOX" else e[2] for e in list_entries(r)}
    expect("INBOX" in top and ctx.root in top, "LIST \"\" %% lacks INBOX or %s" % ctx.root)


@check
def check_list_children(ctx):
    parents = (ctx.root, ctx.mb("a"), ctx.mb("a", "b"))
    leaves = (ctx.mb("a", "b", "c"), ctx.mb("search"))
    # RETURN (CHILDREN) makes the child attributes mandatory (RFC 5258 4);
    # in a plain LIST they are optional (RFC 3348) but must be right if sent.
    for cmd, strict in (('LIST "" ' + q(ctx.root + "*") + " RETURN (CHILDREN)", True),
                        ('LIST "" ' + q(ctx.root + "*"), False)):
        attrs = {e[2]: e[0] for e in list_entries(ctx.A.ok(cmd))}
        for name, a in attrs.items():
            expect(not {"\\haschildren", "\\hasnochildren"} <= a, "%s has both child attributes" % name)
        for name in parents:
            a = attrs.get(name, set())
            expect("\\haschildren" in a or (not strict and "\\hasnochildren" not in a),
                   "%s: %s lacks \\HasChildren: %s" % (cmd, name, sorted(a)))
        for name in leaves:
            a = attrs.get(name, set())
            expect("\\hasnochildren" in a or (not strict and "\\haschildren" not in a),
                   "%s: %s lacks \\HasNoChildren: %s" % (cmd, name, sorted(a)))


@check
def check_rename(ctx):
    A = ctx.A
    A.ok("CREATE " + q(ctx.mb("r1")))
    A.ok("CREATE " + q(ctx.mb("r1", "kid")))
    ctx.append(A, ctx.mb("r1"), simple_msg(1))
    A.ok("RENAME " + q(ctx.mb("r1")) + " " + q(ctx.mb("r2")))
    r = A.ok('LIST "" ' + q(ctx.mb("*")))
    names = {e[2] for e in list_entries(r)}
    expect(ctx.mb("r2") in names and ctx.mb("r2", "kid") in names, "renamed tree missing: %s" % sorted(names))
    expect(ctx.mb("r1") not in names and ctx.mb("r1", "kid") not in names, "old names still listed")
    r = A.ok("STATUS " + q(ctx.mb("r2")) + " (MESSAGES)")
    expect_eq(status_items(r)["MESSAGES"], 1, "messages after RENAME")
    A.not_ok("RENAME " + q(ctx.mb("r2")) + " " + q(ctx.mb("search")), allowed=("NO",))
    A.not_ok("RENAME " + q(ctx.mb("nosuch")) + " " + q(ctx.mb("r3")), allowed=("NO",))


@check
def check_delete(ctx):
    A = ctx.A
    A.ok("DELETE " + q(ctx.mb("r2", "kid")))
    A.ok("DELETE " + q(ctx.mb("r2")))
    r = A.ok('LIST "" ' + q(ctx.mb("r*")))
    expect_eq(list_entries(r), [], "LIST after DELETE")
    A.not_ok("DELETE " + q(ctx.mb("r2")), allowed=("NO",))
    A.not_ok("DELETE INBOX", allowed=("NO",))
    r = A.ok('LIST "" INBOX')
    expect(len(list_entries(r)) == 1, "INBOX gone after DELETE INBOX")


@check
def check_subscribe(ctx):
    A = ctx.A
    sub, other = ctx.mb("sub"), ctx.mb("store")
    A.ok("SUBSCRIBE " + q(sub))
    r = A.ok('LSUB "" ' + q(ctx.mb("*")))
    names = {e[2] for e in list_entries(r, "LSUB")}
    expect(sub in names and other not in names, "LSUB: %s" % sorted(names))
    r = A.ok('LIST (SUBSCRIBED) "" "*"')
    e = {x[2]: x[0] for x in list_entries(r)}
    expect(sub in e and "\\subscribed" in e[sub], "LIST (SUBSCRIBED): %s" % e)
    expect(all("\\subscribed" in a for a in e.values()), "LIST (SUBSCRIBED) entry without \\Subscribed")
    expect(other not in e, "LIST (SUBSCRIBED) lists an unsubscribed mailbox")
    r = A.ok('LIST "" ' + q(ctx.mb("*")) + " RETURN (SUBSCRIBED)")
    e = {x[2]: x[0] for x in list_entries(r)}
    expect("\\subscribed" in e.get(sub, ()) and "\\subscribed" not in e.get(other, ()),
           "RETURN (SUBSCRIBED): %s" % e)
    A.ok("UNSUBSCRIBE " + q(sub))
    r = A.ok('LSUB "" ' + q(ctx.mb("*")))
    expect(sub not in {e[2] for e in list_entries(r, "LSUB")}, "still in LSUB after UNSUBSCRIBE")
    r = A.ok('LIST (SUBSCRIBED) "" ' + q(ctx.mb("*")))
    expect(sub not in {e[2] for e in list_entries(r)}, "still in LIST (SUBSCRIBED) after UNSUBSCRIBE")


SPECIAL = {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash"}


@check
def check_list_special_use(ctx):
    A = ctx.A
    r = A.ok('LIST "" "*" RETURN (SPECIAL-USE)')
    with_use = {e[2]: e[0] & SPECIAL for e in list_entries(r) if e[0] & SPECIAL}
    r = A.ok('LIST (SPECIAL-USE) "" "*"')
    sel = list_entries(r)
    for attrs, _, name, _ in sel:
        expect(attrs & SPECIAL, "LIST (SPECIAL-USE) returned %s without a special-use attribute" % name)
    expect_eq({e[2] for e in sel}, set(with_use), "mailboxes from LIST (SPECIAL-USE) vs RETURN (SPECIAL-USE)")
    r = A.ok('LIST "" ' + q(ctx.mb("*")) + " RETURN (SPECIAL-USE)")
    expect(not [e for e in list_entries(r) if e[0] & SPECIAL], "new test mailboxes have special-use attributes")
    print("   (%d special-use mailboxes: %s)" % (len(with_use), ", ".join(
        "%s=%s" % (k, "/".join(sorted(v))) for k, v in sorted(with_use.items()))))


# ---- append / status / select ----------------------------------------------

@check
def check_append(ctx):
    A = ctx.A
    mbox = ctx.mb("search")
    ctx.search = []
    validity = None
    for headers, body, flags, date in SEARCH_MSGS:
        data = build(headers, body)
        # imaplib.append: flags, internal date, synchronizing literal
        typ, dat = A.imap.append(q(mbox), "(" + " ".join(flags) + ")" if flags else None,
                                 imaplib.Time2Internaldate(date), data)
        expect(typ == "OK", "APPEND: %s %r" % (typ, dat))
        m = re.match(rb"\[APPENDUID (\d+) (\d+)\]", dat[-1] or b"", re.I)
        expect(m, "APPEND tagged OK lacks [APPENDUID]: %r" % dat)
        v, uid = int(m.group(1)), int(m.group(2))
        expect(validity in (None, v), "APPENDUID uidvalidity changed between appends")
        validity = v
        expect(not ctx.search or uid > ctx.search[-1]["uid"], "APPENDUID UIDs do not ascend")
        ctx.search.append({"uid": uid, "data": data, "flags": {f.lower() for f in flags}, "date": date,
                           "headers": headers, "body": body.encode()})
        ctx.msgs[(mbox, uid)] = data
    ctx.search_validity = validity
    r = A.ok("STATUS " + q(mbox) + " (UIDVALIDITY UIDNEXT MESSAGES)")
    st = status_items(r)
    expect_eq(st["UIDVALIDITY"], validity, "STATUS UIDVALIDITY vs APPENDUID")
    expect(st["UIDNEXT"] > ctx.search[-1]["uid"], "UIDNEXT not above the last APPENDUID")
    expect_eq(st["MESSAGES"], 5, "STATUS MESSAGES")
    # raw APPEND with a synchronizing literal into other mailboxes
    for name, n in (("store", 3), ("exp", 6), ("idle", 1), ("qr", 5)):
        for i in range(n):
            ctx.append(A, ctx.mb(name), simple_msg(i + 1))
    uids = ctx.uids[ctx.mb("exp")]
    expect(uids == sorted(uids) and len(set(uids)) == len(uids), "APPENDUID UIDs do not ascend: %s" % uids)


@check
def check_append_literal_plus(ctx):
    A = ctx.A
    mbox = ctx.mb("misc")
    data = simple_msg(99, "literal plus")
    tag = A.next_tag()
    A.send(b"%s APPEND %s (\\Seen) {%d+}\r\n" % (tag.encode(), q(mbox).encode(), len(data)) + data + b"\r\n")
    r = A.collect(tag)
    expect(not [x for x in r.untagged if x.kind == "cont"], "continuation sent for a LITERAL+ literal")
    expect(r.status == "OK", "APPEND with {n+}: %r" % r.final)
    uid = appenduid(r)
    A.ok("EXAMINE " + q(mbox))
    f = A.ok("UID FETCH %d (BODY.PEEK[] FLAGS)" % uid).fetch_by_uid()
    expect_eq(raw(f[uid]["BODY[]"]), data, "LITERAL+ message body")
    expect("\\seen" in flagset(f[uid]["FLAGS"]), "flags given with the LITERAL+ APPEND")
    A.ok("UNSELECT")
    ctx.misc_uid = uid


@check
def check_append_trycreate(ctx):
    r = ctx.A.cmd("APPEND " + q(ctx.mb("nosuch")) + " ", simple_msg(5))
    expect(r.status == "NO", "APPEND to a missing mailbox: %r" % r.final)
    # RFC 3501 6.3.11: SHOULD be [TRYCREATE]
    expect_eq(r.code_name(), "TRYCREATE", "response code of APPEND to a missing mailbox")


@check
def check_append_oversize_literal(ctx):
    c = ctx.connect("O")
    caps = c.refresh_caps()
    limits = [c for c in caps if c.startswith("APPENDLIMIT=")]
    size = int(limits[0].split("=", 1)[1]) + 1 if limits and limits[0].split("=", 1)[1].isdigit() else 999999999
    tag = c.next_tag()
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), q(ctx.mb("misc")).encode(), size))
    while True:
        r = c.read()
        if r.kind == "cont":
            c.closed = True  # we will not send the literal; drop the connection
            raise Failure("server sent a continuation for a %d-byte literal" % size)
        if r.tag == tag:
            break
    expect(r.name in ("NO", "BAD"), "oversized APPEND: %r" % r)
    c.ok("NOOP")  # the connection is still in sync
    c.close()


@check
def check_list_status(ctx):
    A = ctx.A
    r = A.ok('LIST "" ' + q(ctx.mb("%")) + " RETURN (STATUS (MESSAGES UIDNEXT))")
    listed = {e[2]: e[0] for e in list_entries(r)}
    stats = {text(s.args[0]): {k: int(v) for k, v in items(s.args[1]).items()} for s in r.of("STATUS")}
    for name, attrs in listed.items():
        if attrs & {"\\noselect", "\\nonexistent"}:
            expect(name not in stats, "STATUS returned for non-selectable %s" % name)
            continue
        expect(name in stats, "no STATUS for %s in LIST-STATUS" % name)
        want = status_items(A.ok("STATUS " + q(name) + " (MESSAGES UIDNEXT)"))
        expect_eq(stats[name], want, "LIST-STATUS of %s vs STATUS" % name)
    expect(set(stats) <= set(listed), "STATUS for unlisted mailboxes: %s" % sorted(set(stats) - set(listed)))
    expect_eq(stats[ctx.mb("exp")]["MESSAGES"], 6, "LIST-STATUS MESSAGES of %s" % ctx.mb("exp"))


@check
def check_status(ctx):
    mbox = ctx.mb("search")
    r = ctx.A.ok("STATUS " + q(mbox) + " (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)")
    st = status_items(r, mbox)
    expect_eq(set(st), {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"}, "STATUS items")
    expect_eq(st["MESSAGES"], 5, "MESSAGES")
    expect_eq(st["RECENT"], 5, "RECENT (appended while nobody had it selected)")
    expect_eq(st["UNSEEN"], 4, "UNSEEN")
    expect_eq(st["UIDVALIDITY"], ctx.search_validity, "UIDVALIDITY")
    expect(st["UIDNEXT"] > ctx.search[-1]["uid"], "UIDNEXT")
    expect(st["HIGHESTMODSEQ"] > 0, "HIGHESTMODSEQ must be positive")
    ctx.search_status = st


@check
def check_examine(ctx):
    A = ctx.A
    r = A.ok("EXAMINE " + q(ctx.mb("search")))
    expect_eq(r.code_name(), "READ-ONLY", "EXAMINE tagged response code")
    info = select_info(r)
    expect_eq(info["exists"], 5, "EXISTS")
    # No change to a read-only mailbox (RFC 3501 6.3.2).  A tagged NO is the
    # clear answer; Dovecot answers "OK Store ignored" and changes nothing,
    # which is accepted here as long as the flags really stay unchanged.
    A.cmd("STORE 1 +FLAGS (\\Flagged)")
    A.ok("FETCH 2 BODY[TEXT]")  # read-only: must not set \Seen
    f = A.ok("FETCH 1:2 FLAGS").fetch_by_seq()
    expect("\\flagged" not in flagset(f[1]["FLAGS"]), "STORE changed a message in a read-only mailbox")
    expect("\\seen" not in flagset(f[2]["FLAGS"]), "FETCH BODY[] set \\Seen in a read-only mailbox")
    A.ok("CLOSE")


@check
def check_select(ctx):
    A = ctx.A
    r = A.ok("SELECT " + q(ctx.mb("search")))
    expect_eq(r.code_name(), "READ-WRITE", "SELECT tagged response code")
    info = select_info(r)
    expect(info["flags"] is not None, "no untagged FLAGS")
    fl = flagset(info["flags"])
    expect({"\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft"} <= fl, "FLAGS lacks system flags: %s" % fl)
    expect_eq(info["exists"], 5, "EXISTS")
    # EXAMINE must not have taken \Recent away (RFC 3501 6.3.2)
    expect_eq(info["recent"], 5, "RECENT")
    codes = info["codes"]
    expect("UIDVALIDITY" in codes, "no [UIDVALIDITY]")
    expect_eq(int(codes["UIDVALIDITY"][0]), ctx.search_validity, "UIDVALIDITY")
    expect("UIDNEXT" in codes, "no [UIDNEXT]")
    expect_eq(int(codes["UIDNEXT"][0]), ctx.search_status["UIDNEXT"], "UIDNEXT vs STATUS")
    expect("PERMANENTFLAGS" in codes, "no [PERMANENTFLAGS]")
    pf = {str(x).lower() for x in codes["PERMANENTFLAGS"][0]}
    expect({"\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft", "\\*"} <= pf,
           "PERMANENTFLAGS lacks system flags or \\*: %s" % pf)
    if "UNSEEN" in codes:  # optional; when present it is the first unseen seq
        expect_eq(int(codes["UNSEEN"][0]), 2, "[UNSEEN]")


@check
def check_select_nonexistent(ctx):
    c = ctx.connect("N")
    c.ok("SELECT INBOX")
    c.not_ok("SELECT " + q(ctx.mb("nosuch")), allowed=("NO",))
    # a failed SELECT leaves no mailbox selected (RFC 3501 6.3.1)
    c.not_ok("FETCH 1 FLAGS")
    c.close()


# ---- search ---------------------------------------------------------------

def _sizes(ctx):
    return [len(m["data"]) for m in ctx.search]


@check
def check_search_keys(ctx):
    A = ctx.A
    sz = _sizes(ctx)
    u = [m["uid"] for m in ctx.search]
    cases = [
        ("ALL", {1, 2, 3, 4, 5}),
        ("ANSWERED", {1}),
        ("BCC dave", {2}),
        ("BEFORE 1-Mar-2022", {1, 2}),
        ("BODY noodle", {2}),
        ("BODY quarterly", {1}),
        ("CC carol", {1}),
        ("DELETED", {3}),
        ("DRAFT", {3}),
        ("FLAGGED", {2}),
        ("FROM alice", {1}),
        ("FROM carol", {3}),
        ("HEADER X-Tracking alpha", {1}),
        ('HEADER X-Tracking ""', {1, 4}),
        ("HEADER Message-ID m4@example", {4}),
        ("KEYWORD $Important", {2}),
        ("LARGER %d" % (max(sz) - 1), {i + 1 for i, s in enumerate(sz) if s > max(sz) - 1}),
        ("LARGER %d" % sz[1], {i + 1 for i, s in enumerate(sz) if s > sz[1]}),
        ("NEW", {2, 3, 4, 5}),
        ("NOT SEEN", {2, 3, 4, 5}),
        ("OLD", set()),
        ("ON 16-Feb-2022", {2}),
        ("OR FROM alice FROM bob", {1, 2}),
        ("RECENT", {1, 2, 3, 4, 5}),
        ("SEEN", {1}),
        ("SENTBEFORE 1-Feb-2022", {1}),
        ("SENTON 15-Feb-2022", {2}),
        ("SENTSINCE 1-Mar-2022", {3, 4, 5}),
        ("SINCE 1-Mar-2022", {3, 4, 5}),
        ("SMALLER %d" % (sz[4] + 1), {i + 1 for i, s in enumerate(sz) if s < sz[4] + 1}),
        ("SUBJECT quarterly", {1, 3}),
        ("SUBJECT QUARTERLY", {1, 3}),
        ("TEXT xylophone", {4}),
        ("TEXT Lunch", {2}),
        ("TO alice", {2, 3, 4}),
        ("UID %d:%d" % (u[1], u[2]), {2, 3}),
        ("UNANSWERED", {2, 3, 4, 5}),
        ("UNDELETED", {1, 2, 4, 5}),
        ("UNDRAFT", {1, 2, 4, 5}),
        ("UNFLAGGED", {1, 3, 4, 5}),
        ("UNKEYWORD $Important", {1, 3, 4, 5}),
        ("UNSEEN", {2, 3, 4, 5}),
    ]
    for key, want in cases:
        r = A.cmd("SEARCH " + key)
        expect(r.status == "OK", "SEARCH %s: %r" % (key, r.final))
        expect_eq(search_set(r), want, "SEARCH " + key)


@check
def check_search_sets_and_groups(ctx):
    A = ctx.A
    cases = [
        ("2:4", {2, 3, 4}),
        ("4:2", {2, 3, 4}),
        ("1,3:*", {1, 3, 4, 5}),
        ("*", {5}),
        ("1:* UNSEEN", {2, 3, 4, 5}),
        ("(FROM alice) (TO bob)", {1}),
        ("NOT (OR SEEN DRAFT)", {2, 4, 5}),
        ("OR (SEEN ANSWERED) (DELETED DRAFT)", {1, 3}),
        ("OR (OR FROM alice FROM bob) SUBJECT photos", {1, 2, 4}),
        ("2:5 NOT (FLAGGED)", {3, 4, 5}),
        ("(SINCE 1-Feb-2022 BEFORE 1-Apr-2022) UNDELETED", {2}),
        ("CHARSET UTF-8 SUBJECT quarterly", {1, 3}),
    ]
    for key, want in cases:
        r = A.cmd("SEARCH " + key)
        expect(r.status == "OK", "SEARCH %s: %r" % (key, r.final))
        expect_eq(search_set(r), want, "SEARCH " + key)
    # RFC 3501 6.4.4: unknown charset -> tagged NO [BADCHARSET]
    r = A.cmd("SEARCH CHARSET X-NO-SUCH-CHARSET SUBJECT x")
    expect(r.status == "NO", "SEARCH with an unknown charset: %r" % r.final)
    expect_eq(r.code_name(), "BADCHARSET", "response code for an unknown charset")


def esearch(r, tag):
    es = r.of("ESEARCH")
    expect(len(es) == 1, "want exactly one ESEARCH, got %d" % len(es))
    expect(not r.of("SEARCH"), "SEARCH response sent alongside ESEARCH")
    args = list(es[0].args)
    if args and isinstance(args[0], list):
        corr = args.pop(0)
        expect(len(corr) == 2 and str(corr[0]).upper() == "TAG" and text(corr[1]) == tag,
               "ESEARCH correlator %r does not name tag %s" % (corr, tag))
    uid = False
    if args and str(args[0]).upper() == "UID":
        uid = True
        args.pop(0)
    return uid, {str(k).upper(): v for k, v in zip(args[0::2], args[1::2])}


@check
def check_esearch(ctx):
    A = ctx.A
    r = A.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED")
    uid, res = esearch(r, r.tag)
    expect(not uid, "ESEARCH for SEARCH carries UID")
    expect_eq(int(res.get("MIN", -1)), 1, "MIN")
    expect_eq(int(res.get("MAX", -1)), 5, "MAX")
    expect_eq(int(res.get("COUNT", -1)), 4, "COUNT")
    expect_eq(set(parse_set(res.get("ALL", ""))), {1, 2, 4, 5}, "ALL")
    u = [m["uid"] for m in ctx.search]
    r = A.ok("UID SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED")
    uid, res = esearch(r, r.tag)
    expect(uid, "ESEARCH for UID SEARCH lacks UID")
    expect_eq(int(res["MIN"]), u[0], "UID MIN")
    expect_eq(int(res["MAX"]), u[4], "UID MAX")
    expect_eq(set(parse_set(res["ALL"])), {u[0], u[1], u[3], u[4]}, "UID ALL")
    r = A.ok("SEARCH RETURN (COUNT MIN MAX) SUBJECT zz-no-such-subject")
    _, res = esearch(r, r.tag)
    expect_eq(int(res.get("COUNT", 0)), 0, "COUNT of no match")
    expect("MIN" not in res and "MAX" not in res, "MIN/MAX returned for no match")
    r = A.ok("SEARCH RETURN () FLAGGED")  # same as RETURN (ALL)
    _, res = esearch(r, r.tag)
    expect_eq(set(parse_set(res.get("ALL", ""))), {2}, "RETURN () result")


@check
def check_uid_search(ctx):
    A = ctx.A
    u = [m["uid"] for m in ctx.search]
    for key, want in [("FROM alice", {u[0]}), ("UNDELETED", {u[0], u[1], u[3], u[4]}),
                      ("UID %d,%d" % (u[4], u[0]), {u[0], u[4]}), ("2:3", {u[1], u[2]}),
                      ("UID %d:*" % (u[4] + 1000), {u[4]})]:
        r = A.cmd("UID SEARCH " + key)
        expect(r.status == "OK", "UID SEARCH %s: %r" % (key, r.final))
        expect_eq(search_set(r), want, "UID SEARCH " + key)


# ---- fetch ----------------------------------------------------------------

@check
def check_fetch_basic(ctx):
    f = ctx.A.ok("FETCH 1:5 (FLAGS UID INTERNALDATE RFC822.SIZE)").fetch_by_seq()
    expect_eq(sorted(f), [1, 2, 3, 4, 5], "FETCH responses")
    for i, m in enumerate(ctx.search, 1):
        it = f[i]
        expect_eq(int(it["UID"]), m["uid"], "UID of %d" % i)
        expect_eq(flagset(it["FLAGS"]), m["flags"], "FLAGS of %d" % i)
        expect_eq(parse_internaldate(it["INTERNALDATE"]), m["date"], "INTERNALDATE of %d" % i)
        expect_eq(int(it["RFC822.SIZE"]), len(m["data"]), "RFC822.SIZE of %d" % i)


def _addr(a):
    return [text(x) for x in a]


@check
def check_fetch_envelope(ctx):
    f = ctx.A.ok("FETCH 1:3 ENVELOPE").fetch_by_seq()
    e1, e2, e3 = (f[i]["ENVELOPE"] for i in (1, 2, 3))
    expect(len(e1) == 10, "ENVELOPE has 10 fields, got %d" % len(e1))
    h1 = dict(ctx.search[0]["headers"])
    expect_eq(text(e1[0]), h1["Date"], "envelope date")
    expect_eq(text(e1[1]), "Quarterly report", "envelope subject")
    alice = ["Alice", None, "alice", "example.org"]
    expect_eq([_addr(a) for a in e1[2]], [alice], "envelope from")
    # absent Sender/Reply-To default to From (RFC 3501 7.4.2)
    expect_eq([_addr(a) for a in e1[3]], [alice], "envelope sender")
    expect_eq([_addr(a) for a in e1[4]], [alice], "envelope reply-to")
    expect_eq([_addr(a) for a in e1[5]], [[None, None, "bob", "example.net"]], "envelope to")
    expect_eq([_addr(a) for a in e1[6]], [["Carol", None, "carol", "example.com"]], "envelope cc")
    expect_eq(e1[7], None, "envelope bcc")
    expect_eq(e1[8], None, "envelope in-reply-to")
    expect_eq(text(e1[9]), "<m1@example.org>", "envelope message-id")
    expect_eq([_addr(a) for a in e2[7]], [[None, None, "dave", "example.com"]], "envelope bcc of 2")
    expect_eq(e2[6], None, "envelope cc of 2")
    expect_eq([_addr(a) for a in e3[4]], [["Team", None, "team", "example.com"]], "envelope reply-to of 3")
    expect_eq(text(e3[8]), "<m1@example.org>", "envelope in-reply-to of 3")


def _params(lst):
    if lst is None:
        return {}
    return {text(k).lower(): text(v) for k, v in zip(lst[0::2], lst[1::2])}


@check
def check_fetch_bodystructure(ctx):
    f = ctx.A.ok("FETCH 4 (BODYSTRUCTURE BODY)").fetch_by_seq()[4]
    bs = f["BODYSTRUCTURE"]
    # multipart: body parts first, then the subtype
    nparts = 0
    while nparts < len(bs) and isinstance(bs[nparts], list):
        nparts += 1
    expect_eq(nparts, 2, "number of body parts")
    expect_eq(text(bs[2]).lower(), "mixed", "multipart subtype")
    expect_eq(_params(bs[3]).get("boundary"), BOUNDARY, "boundary parameter (body-ext-mpart)")
    p1, p2 = bs[0], bs[1]
    expect_eq((text(p1[0]).lower(), text(p1[1]).lower()), ("text", "plain"), "part 1 type")
    expect_eq(_params(p1[2]).get("charset", "").lower(), "us-ascii", "part 1 charset")
    expect_eq(text(p1[5]).lower(), "7bit", "part 1 encoding")
    expect_eq(int(p1[6]), len(M4_PART1), "part 1 size")
    expect_eq(int(p1[7]), M4_PART1.count("\n"), "part 1 lines")
    expect_eq((text(p2[0]).lower(), text(p2[1]).lower()), ("application", "octet-stream"), "part 2 type")
    expect_eq(_params(p2[2]).get("name"), "x.bin", "part 2 name parameter")
    expect_eq(text(p2[5]).lower(), "base64", "part 2 encoding")
    expect_eq(int(p2[6]), len(M4_PART2), "part 2 size")
    expect(len(p2) > 8 and isinstance(p2[8], list), "part 2 lacks body-fld-dsp: %r" % (p2,))
    expect_eq(text(p2[8][0]).lower(), "attachment", "part 2 disposition")
    expect_eq(_params(p2[8][1]).get("filename"), "x.bin", "part 2 disposition filename")
    # BODY: same structure without extension data
    b = f["BODY"]
    expect(isinstance(b[0], list) and isinstance(b[1], list), "BODY is not multipart: %r" % (b,))
    expect_eq(len(b), 3, "BODY of a multipart has parts + subtype only")
    expect_eq(len(b[0]), 8, "BODY text part has 8 fields (no extension data)")
    # single part, no Content-Type: text/plain
    s = ctx.A.ok("FETCH 2 BODYSTRUCTURE").fetch_by_seq()[2]["BODYSTRUCTURE"]
    body2 = ctx.search[1]["body"]
    expect_eq((text(s[0]).lower(), text(s[1]).lower()), ("text", "plain"), "single-part type")
    expect_eq(int(s[6]), len(body2), "single-part size")
    expect_eq(int(s[7]), body2.count(b"\n"), "single-part lines")


@check
def check_fetch_body_exact(ctx):
    f = ctx.A.ok("FETCH 1:5 BODY.PEEK[]").fetch_by_seq()
    for i, m in enumerate(ctx.search, 1):
        expect_eq(raw(f[i].get("BODY[]")), m["data"], "BODY[] of %d" % i)
    f = ctx.A.ok("FETCH 1:5 FLAGS").fetch_by_seq()
    for i, m in enumerate(ctx.search, 1):
        expect_eq(flagset(f[i]["FLAGS"]), m["flags"], "FLAGS of %d after BODY.PEEK[]" % i)


def _get(it, key):
    key = re.sub(r"\s+", " ", key.upper())
    expect(key in it, "no %s in FETCH response (have %s)" % (key, sorted(it)))
    return raw(it[key])


@check
def check_fetch_sections(ctx):
    m4 = ctx.search[3]["data"]
    head, _, body = m4.partition(b"\r\n\r\n")
    f = ctx.A.ok("FETCH 4 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.MIME] "
                 "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM)])"
                 ).fetch_by_seq()[4]
    expect_eq(_get(f, "BODY[HEADER]"), head + b"\r\n\r\n", "BODY[HEADER]")
    expect_eq(_get(f, "BODY[TEXT]"), body, "BODY[TEXT]")
    expect_eq(_get(f, "BODY[1]"), M4_PART1.encode(), "BODY[1]")
    expect_eq(_get(f, "BODY[2]"), M4_PART2.encode(), "BODY[2]")
    expect_eq(_get(f, "BODY[2.MIME]"), M4_PART2_MIME.encode(), "BODY[2.MIME]")
    hf = _get(f, "BODY[HEADER.FIELDS (SUBJECT FROM)]")
    expect(hf.endswith(b"\r\n\r\n"), "HEADER.FIELDS must end with the blank line: %r" % hf)
    expect_eq(set(hf[:-2].split(b"\r\n")) - {b""}, {b"Subject: Photos", b"From: Dave <dave@example.com>"},
              "BODY[HEADER.FIELDS (SUBJECT FROM)] lines")
    hn = _get(f, "BODY[HEADER.FIELDS.NOT (SUBJECT FROM)]")
    names = {l.split(b":", 1)[0].lower() for l in hn.split(b"\r\n") if l}
    expect_eq(names, {b"to", b"date", b"message-id", b"x-tracking", b"mime-version", b"content-type"},
              "header names in HEADER.FIELDS.NOT")
    # a single-part message's part 1 is its body
    f = ctx.A.ok("FETCH 2 BODY.PEEK[1]").fetch_by_seq()[2]
    expect_eq(_get(f, "BODY[1]"), ctx.search[1]["body"], "BODY[1] of a single-part message")


@check
def check_fetch_partial(ctx):
    m4 = ctx.search[3]["data"]
    body = m4.partition(b"\r\n\r\n")[2]
    f = ctx.A.ok("FETCH 4 (BODY.PEEK[]<0.10> BODY.PEEK[TEXT]<5.7>)").fetch_by_seq()[4]
    expect_eq(_get(f, "BODY[]<0>"), m4[:10], "BODY[]<0.10>")
    expect_eq(_get(f, "BODY[TEXT]<5>"), body[5:12], "BODY[TEXT]<5.7>")
    f = ctx.A.ok("FETCH 4 BODY.PEEK[]<10.20>").fetch_by_seq()[4]
    expect_eq(_get(f, "BODY[]<10>"), m4[10:30], "BODY[]<10.20>")
    f = ctx.A.ok("FETCH 4 BODY.PEEK[]<%d.10>" % (len(m4) - 4)).fetch_by_seq()[4]
    expect_eq(_get(f, "BODY[]<%d>" % (len(m4) - 4)), m4[-4:], "partial running past the end")
    f = ctx.A.ok("FETCH 4 BODY.PEEK[]<100000.10>").fetch_by_seq()[4]
    expect_eq(_get(f, "BODY[]<100000>"), b"", "partial starting beyond the end")


@check
def check_fetch_peek_vs_seen(ctx):
    A = ctx.A
    m5 = ctx.search[4]
    A.ok("FETCH 5 BODY.PEEK[TEXT]")
    f = A.ok("FETCH 5 FLAGS").fetch_by_seq()[5]
    expect("\\seen" not in flagset(f["FLAGS"]), "BODY.PEEK set \\Seen")
    r = A.ok("FETCH 5 BODY[]")
    expect_eq(raw(r.fetch_by_seq()[5]["BODY[]"]), m5["data"], "BODY[]")
    f = A.ok("FETCH 5 FLAGS").fetch_by_seq()[5]
    expect("\\seen" in flagset(f["FLAGS"]), "BODY[] did not set \\Seen")
    m5["flags"].add("\\seen")


@check
def check_uid_fetch(ctx):
    A = ctx.A
    u = [m["uid"] for m in ctx.search]
    f = A.ok("UID FETCH %d:%d FLAGS" % (u[1], u[2])).fetch_by_uid()  # UID is always included
    expect_eq(sorted(f), [u[1], u[2]], "UIDs returned")
    f = A.ok("UID FETCH %d:* UID" % (u[4] + 1000)).fetch_by_uid()  # n:* includes the last message
    expect_eq(sorted(f), [u[4]], "UID FETCH beyond-the-end:*")
    r = A.ok("UID FETCH %d UID" % (u[4] + 1000))
    expect_eq(r.of("FETCH"), [], "UID FETCH of a non-existent UID")
    r = A.ok("UID FETCH %d,%d (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])" % (u[0], u[3]))
    f = r.fetch_by_uid()
    expect_eq(int(f[u[3]]["RFC822.SIZE"]), len(ctx.search[3]["data"]), "RFC822.SIZE via UID FETCH")


# ---- store / copy / move ---------------------------------------------------

@check
def check_store(ctx):
    A = ctx.A
    A.ok("SELECT " + q(ctx.mb("store")))
    r = A.ok("STORE 1 +FLAGS (\\Flagged)")
    f = r.fetch_by_seq()
    expect(1 in f and "FLAGS" in f[1], "no FETCH FLAGS after STORE +FLAGS")
    expect_eq(flagset(f[1]["FLAGS"]), {"\\flagged"}, "flags after +FLAGS")
    f = A.ok("STORE 1 -FLAGS (\\Flagged)").fetch_by_seq()
    expect_eq(flagset(f[1]["FLAGS"]), set(), "flags after -FLAGS")
    f = A.ok("STORE 2 FLAGS (\\Seen $Label1)").fetch_by_seq()
    expect_eq(flagset(f[2]["FLAGS"]), {"\\seen", "$label1"}, "flags after FLAGS")
    r = A.ok("STORE 1:3 +FLAGS.SILENT (\\Answered)")
    # .SILENT: no FLAGS echoed (a MODSEQ-only FETCH is allowed with CONDSTORE)
    expect(not [x for x in r.fetches() if "FLAGS" in x[1]], ".SILENT STORE returned FLAGS")
    f = A.ok("FETCH 1:3 FLAGS").fetch_by_seq()
    expect_eq([flagset(f[i]["FLAGS"]) for i in (1, 2, 3)],
              [{"\\answered"}, {"\\answered", "\\seen", "$label1"}, {"\\answered"}], "flags after .SILENT")
    f = A.ok("STORE 1:3 -FLAGS.SILENT (\\Answered)")
    f = A.ok("FETCH 1:3 FLAGS").fetch_by_seq()
    expect_eq([flagset(f[i]["FLAGS"]) for i in (1, 2, 3)], [set(), {"\\seen", "$label1"}, set()],
              "flags after -FLAGS.SILENT")


@check
def check_uid_store(ctx):
    A = ctx.A
    u = ctx.uids[ctx.mb("store")]
    f = A.ok("UID STORE %d +FLAGS (\\Draft)" % u[2]).fetch_by_uid()
    expect_eq(sorted(f), [u[2]], "UID STORE FETCH responses")
    expect_eq(flagset(f[u[2]]["FLAGS"]), {"\\draft"}, "flags after UID STORE")
    A.ok("UID STORE %d -FLAGS.SILENT (\\Draft)" % u[2])
    r = A.ok("UID STORE %d +FLAGS (\\Flagged)" % (u[2] + 1000))
    expect_eq(r.of("FETCH"), [], "UID STORE of a missing UID")
    A.ok("UNSELECT")  # STATUS on the selected mailbox is discouraged (RFC 3501 6.3.10)


@check
def check_condstore(ctx):
    C = ctx.connect("C")
    mbox = ctx.mb("store")
    r = C.ok("SELECT " + q(mbox) + " (CONDSTORE)")
    info = select_info(r)
    expect("HIGHESTMODSEQ" in info["codes"], "SELECT (CONDSTORE) lacks [HIGHESTMODSEQ]")
    h = int(info["codes"]["HIGHESTMODSEQ"][0])
    f = C.ok("FETCH 1:* (MODSEQ)").fetch_by_seq()
    ms = {s: int(it["MODSEQ"][0]) for s, it in f.items()}
    expect_eq(sorted(ms), [1, 2, 3], "FETCH MODSEQ responses")
    expect(all(0 < m <= h for m in ms.values()), "MODSEQ out of range 1..%d: %s" % (h, ms))
    # STORE in a CONDSTORE session answers with MODSEQ
    f = C.ok("STORE 2 +FLAGS (\\Flagged)").fetch_by_seq()
    expect("MODSEQ" in f.get(2, {}), "STORE response lacks MODSEQ once CONDSTORE is enabled")
    m2 = int(f[2]["MODSEQ"][0])
    expect(m2 > h, "MODSEQ did not increase: %d <= %d" % (m2, h))
    f = C.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h).fetch_by_seq()
    expect_eq(sorted(f), [2], "FETCH CHANGEDSINCE")
    expect("MODSEQ" in f[2], "CHANGEDSINCE implies MODSEQ in the response")
    # STATUS from another session sees the new HIGHESTMODSEQ
    st = status_items(ctx.A.ok("STATUS " + q(mbox) + " (HIGHESTMODSEQ)"))
    expect(st["HIGHESTMODSEQ"] >= m2, "STATUS HIGHESTMODSEQ %d < %d" % (st["HIGHESTMODSEQ"], m2))
    ctx.C = C


@check
def check_condstore_unchangedsince(ctx):
    C = ctx.C
    f = C.ok("FETCH 1:3 (MODSEQ)").fetch_by_seq()
    m = max(int(it["MODSEQ"][0]) for it in f.values())
    r = C.ok("STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % m)
    expect(r.code_name() != "MODIFIED", "UNCHANGEDSINCE store refused although unchanged")
    f = r.fetch_by_seq()
    expect(1 in f and int(f[1]["MODSEQ"][0]) > m, "MODSEQ after conditional STORE")
    # message 1 changed after m, message 2 did not
    r = C.cmd("STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Deleted)" % m)
    expect(r.status in ("OK", "NO"), "conditional STORE: %r" % r.final)
    expect_eq(r.code_name(), "MODIFIED", "response code when a message changed since UNCHANGEDSINCE")
    expect_eq(set(parse_set(r.code[1][0])), {1}, "MODIFIED set")
    f = C.ok("FETCH 1:2 FLAGS").fetch_by_seq()
    expect("\\deleted" not in flagset(f[1]["FLAGS"]), "changed message was modified anyway")
    expect("\\deleted" in flagset(f[2]["FLAGS"]), "unchanged message was not modified")
    C.ok("STORE 2 -FLAGS.SILENT (\\Deleted)")
    # UNCHANGEDSINCE 0 always fails (RFC 7162 3.1.3)
    r = C.cmd("STORE 3 (UNCHANGEDSINCE 0) +FLAGS (\\Flagged)")
    expect_eq(r.code_name(), "MODIFIED", "UNCHANGEDSINCE 0")
    f = C.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)").fetch_by_uid()
    expect(len(f) == 3 and all("MODSEQ" in it for it in f.values()), "UID FETCH CHANGEDSINCE 1")


@check
def check_search_modseq(ctx):
    C = ctx.C
    f = C.ok("FETCH 1:* (MODSEQ)").fetch_by_seq()
    ms = {s: int(it["MODSEQ"][0]) for s, it in f.items()}
    x = ms[1]
    want = {s for s, m in ms.items() if m >= x}
    r = C.ok("SEARCH MODSEQ %d" % x)
    s = r.of("SEARCH")
    expect(len(s) == 1, "want one SEARCH response")
    expect_eq({int(a) for a in s[0].args if not isinstance(a, list)}, want, "SEARCH MODSEQ %d" % x)
    tail = s[0].args[-1]
    expect(isinstance(tail, list) and str(tail[0]).upper() == "MODSEQ", "SEARCH MODSEQ lacks (MODSEQ n)")
    expect_eq(int(tail[1]), max(ms[i] for i in want), "(MODSEQ n) of SEARCH")
    r = C.ok("SEARCH MODSEQ %d UNSEEN" % (max(ms.values()) + 1))
    expect_eq(search_set(r), set(), "SEARCH MODSEQ above the highest")
    C.ok("UNSELECT")


@check
def check_copy(ctx):
    A = ctx.A
    src, dst = ctx.mb("store"), ctx.mb("dest")
    st = status_items(A.ok("STATUS " + q(dst) + " (UIDVALIDITY MESSAGES)"))
    expect_eq(st["MESSAGES"], 0, "destination starts empty")
    A.ok("SELECT " + q(src))
    f = A.ok("FETCH 1:3 (UID FLAGS INTERNALDATE)").fetch_by_seq()
    r = A.ok("COPY 1:2 " + q(dst))
    v, s, t = copyuid(r)
    expect_eq(v, st["UIDVALIDITY"], "COPYUID uidvalidity")
    expect_eq(s, [int(f[1]["UID"]), int(f[2]["UID"])], "COPYUID source UIDs")
    expect_eq(len(t), 2, "COPYUID destination UID count")
    st2 = status_items(A.ok("STATUS " + q(dst) + " (MESSAGES)"))
    expect_eq(st2["MESSAGES"], 2, "messages after COPY")
    B = ctx.connect("B")
    B.ok("EXAMINE " + q(dst))
    g = B.ok("UID FETCH %s (FLAGS INTERNALDATE)" % fmt_set(t)).fetch_by_uid()
    for su, du in zip(s, t):
        srcit = next(it for it in f.values() if int(it["UID"]) == su)
        # SHOULD preserve flags and internal date (RFC 3501 6.4.7)
        expect_eq(flagset(g[du]["FLAGS"]), flagset(srcit["FLAGS"]), "copied flags")
        expect_eq(parse_internaldate(g[du]["INTERNALDATE"]), parse_internaldate(srcit["INTERNALDATE"]),
                  "copied internal date")
    B.ok("UNSELECT")
    ctx.B = B
    r = A.cmd("COPY 1 " + q(ctx.mb("nosuch")))
    expect(r.status == "NO", "COPY to a missing mailbox: %r" % r.final)
    expect_eq(r.code_name(), "TRYCREATE", "COPY to a missing mailbox: response code")  # SHOULD
    ctx.copied = t


@check
def check_move(ctx):
    A = ctx.A
    u = ctx.uids[ctx.mb("store")]
    r = A.ok("MOVE 3 " + q(ctx.mb("dest")))
    v, s, t = copyuid(r)
    expect_eq(s, [u[2]], "MOVE COPYUID source")
    expect_eq([x.num for x in r.of("EXPUNGE")], [3], "EXPUNGE after MOVE")
    f = A.ok("FETCH 1:* UID").fetch_by_seq()
    expect_eq(sorted(int(it["UID"]) for it in f.values()), u[:2], "source after MOVE")
    st = status_items(A.ok("STATUS " + q(ctx.mb("dest")) + " (MESSAGES)"))
    expect_eq(st["MESSAGES"], 3, "destination after MOVE")


@check
def check_uid_copy_move(ctx):
    A = ctx.A
    u = ctx.uids[ctx.mb("store")]
    r = A.ok("UID COPY %d %s" % (u[0], q(ctx.mb("dest"))))
    _, s, t = copyuid(r)
    expect_eq(s, [u[0]], "UID COPY COPYUID source")
    r = A.ok("UID MOVE %d %s" % (u[1], q(ctx.mb("dest"))))
    _, s, t = copyuid(r)
    expect_eq(s, [u[1]], "UID MOVE COPYUID source")
    expect_eq([x.num for x in r.of("EXPUNGE")], [2], "EXPUNGE after UID MOVE")
    st = status_items(A.ok("STATUS " + q(ctx.mb("dest")) + " (MESSAGES)"))
    expect_eq(st["MESSAGES"], 5, "destination after UID COPY + UID MOVE")
    r = A.ok("UID MOVE %d %s" % (u[1] + 1000, q(ctx.mb("dest"))))
    expect_eq(r.of("EXPUNGE"), [], "UID MOVE of a missing UID")
    A.ok("UNSELECT")


# ---- expunge / close / unselect ---------------------------------------------

@check
def check_expunge(ctx):
    A = ctx.A
    u = list(ctx.uids[ctx.mb("exp")])
    A.ok("SELECT " + q(ctx.mb("exp")))
    A.ok("STORE 2,4,5 +FLAGS.SILENT (\\Deleted)")
    r = A.ok("EXPUNGE")
    seqs = [x.num for x in r.of("EXPUNGE")]
    expect_eq(len(seqs), 3, "number of EXPUNGE responses")
    sim = list(u)
    for n in seqs:  # each number is relative to the state after the previous one
        expect(1 <= n <= len(sim), "EXPUNGE %d out of range (%d messages)" % (n, len(sim)))
        del sim[n - 1]
    expect_eq(sim, [u[0], u[2], u[5]], "messages left according to the EXPUNGE numbers %s" % seqs)
    f = A.ok("FETCH 1:* UID").fetch_by_seq()
    expect_eq([int(f[i]["UID"]) for i in sorted(f)], sim, "UIDs after EXPUNGE")


@check
def check_uid_expunge(ctx):
    A = ctx.A
    u = ctx.uids[ctx.mb("exp")]
    A.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    r = A.ok("UID EXPUNGE %d" % u[2])
    expect_eq([x.num for x in r.of("EXPUNGE")], [2], "UID EXPUNGE responses")
    f = A.ok("FETCH 1:* (UID FLAGS)").fetch_by_seq()
    expect_eq([int(f[i]["UID"]) for i in sorted(f)], [u[0], u[5]], "UIDs after UID EXPUNGE")
    expect("\\deleted" in flagset(f[1]["FLAGS"]), "UID EXPUNGE removed a message outside its set")
    A.ok("STORE 1 -FLAGS.SILENT (\\Deleted)")


@check
def check_close_expunges(ctx):
    A = ctx.A
    A.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    r = A.ok("CLOSE")
    expect_eq(r.of("EXPUNGE"), [], "CLOSE must not send EXPUNGE responses")
    st = status_items(A.ok("STATUS " + q(ctx.mb("exp")) + " (MESSAGES)"))
    expect_eq(st["MESSAGES"], 1, "messages after CLOSE")
    A.not_ok("FETCH 1 UID")  # no mailbox selected after CLOSE


@check
def check_unselect_keeps(ctx):
    A = ctx.A
    A.ok("SELECT " + q(ctx.mb("exp")))
    A.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    r = A.ok("UNSELECT")
    expect_eq(r.of("EXPUNGE"), [], "UNSELECT sent EXPUNGE")
    st = status_items(A.ok("STATUS " + q(ctx.mb("exp")) + " (MESSAGES)"))
    expect_eq(st["MESSAGES"], 1, "messages after UNSELECT")
    A.not_ok("FETCH 1 UID")
    # CLOSE after EXAMINE does not expunge either (RFC 3501 6.4.2)
    A.ok("EXAMINE " + q(ctx.mb("exp")))
    A.ok("CLOSE")
    st = status_items(A.ok("STATUS " + q(ctx.mb("exp")) + " (MESSAGES)"))
    expect_eq(st["MESSAGES"], 1, "messages after CLOSE of an EXAMINEd mailbox")


# ---- IDLE -------------------------------------------------------------------

@check
def check_idle(ctx):
    mbox = ctx.mb("idle")
    I = ctx.connect("D")
    r = I.ok("SELECT " + q(mbox))
    expect_eq(select_info(r)["exists"], 1, "EXISTS before IDLE")
    tag = I.next_tag()
    I.send(tag.encode() + b" IDLE\r\n")
    r = I.read()
    expect(r.kind == "cont", "want '+' after IDLE, got %r" % r)
    got = queue.Queue()

    def reader():
        try:
            while True:
                x = I.read()
                got.put(x)
                if x.tag == tag:
                    return
        except Exception as e:  # reported by the main thread
            got.put(e)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    B = ctx.B
    ctx.append(B, mbox, simple_msg(7, "arrives during IDLE"))
    B.ok("SELECT " + q(mbox))
    B.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    B.ok("UNSELECT")
    seen_exists = seen_flag = False
    responses = []
    deadline = time.time() + 10
    while not (seen_exists and seen_flag) and time.time() < deadline:
        try:
            x = got.get(timeout=max(0.05, deadline - time.time()))
        except queue.Empty:
            break
        if isinstance(x, Exception):
            raise Failure("reading during IDLE: %s" % x)
        responses.append(x)
        if x.name == "EXISTS" and x.num == 2:
            seen_exists = True
        if x.name == "FETCH" and x.num == 1 and "\\flagged" in flagset(items(x.args[0]).get("FLAGS")):
            seen_flag = True
    I.send(b"DONE\r\n")
    th.join(15)
    expect(not th.is_alive(), "no tagged response to DONE")
    final = None
    while not got.empty():
        x = got.get()
        if isinstance(x, Exception):
            raise Failure("reading during IDLE: %s" % x)
        if x.tag == tag:
            final = x
    expect(seen_exists, "no '* 2 EXISTS' within 10 s of another session's APPEND")
    expect(seen_flag, "no '* 1 FETCH (FLAGS (... \\Flagged))' within 10 s of another session's STORE")
    expect(final is not None and final.name == "OK", "IDLE tagged response after DONE: %r" % final)
    I.ok("NOOP")
    I.close()


# ---- QRESYNC ----------------------------------------------------------------

@check
def check_qresync_requires_enable(ctx):
    c = ctx.connect("P")
    r = c.cmd("SELECT " + q(ctx.mb("qr")) + " (QRESYNC (1 1))")
    expect_eq(r.status, "BAD", "SELECT (QRESYNC ...) without ENABLE QRESYNC")  # RFC 7162 3.2.5
    c.close()


@check
def check_qresync_select(ctx):
    mbox = ctx.mb("qr")
    u = list(ctx.uids[mbox])  # 5 messages
    Q = ctx.connect("Q")
    r = Q.ok("ENABLE QRESYNC")
    expect("QRESYNC" in {str(a).upper() for e in r.of("ENABLED") for a in e.args}, "QRESYNC not enabled")
    r = Q.ok("SELECT " + q(mbox))
    info = select_info(r)
    expect("HIGHESTMODSEQ" in info["codes"], "SELECT with QRESYNC enabled lacks [HIGHESTMODSEQ]")
    v, h = int(info["codes"]["UIDVALIDITY"][0]), int(info["codes"]["HIGHESTMODSEQ"][0])
    Q.ok("UNSELECT")
    # another session changes one message, expunges two and appends one
    B = ctx.B
    B.ok("SELECT " + q(mbox))
    B.ok("UID STORE %d +FLAGS.SILENT (\\Flagged)" % u[2])
    B.ok("UID STORE %d,%d +FLAGS.SILENT (\\Deleted)" % (u[1], u[3]))
    B.ok("EXPUNGE")
    B.ok("UNSELECT")
    new = ctx.append(B, mbox, simple_msg(8, "after the QRESYNC snapshot"))
    live = {u[0], u[2], u[4], new}
    r = Q.ok("SELECT %s (QRESYNC (%d %d))" % (q(mbox), v, h))
    expect_eq(r.code_name(), "READ-WRITE", "SELECT (QRESYNC) response code")
    expect_eq(r.of("EXPUNGE"), [], "EXPUNGE responses during QRESYNC SELECT")
    van = r.of("VANISHED")
    expect(len(van) == 1, "want one VANISHED response, got %d" % len(van))
    expect(isinstance(van[0].args[0], list) and str(van[0].args[0][0]).upper() == "EARLIER",
           "VANISHED during SELECT must be (EARLIER)")
    vset = set(parse_set(van[0].args[1]))
    expect({u[1], u[3]} <= vset, "VANISHED (EARLIER) %s lacks the expunged UIDs %s" % (sorted(vset), [u[1], u[3]]))
    expect(not (vset & live), "VANISHED (EARLIER) lists existing messages: %s" % sorted(vset & live))
    f = r.fetch_by_uid()
    for uid, it in f.items():
        expect({"FLAGS", "MODSEQ"} <= set(it), "QRESYNC FETCH lacks FLAGS or MODSEQ: %r" % it)
    expect({u[2], new} <= set(f), "QRESYNC FETCH %s lacks the changed/new UIDs %s" % (sorted(f), [u[2], new]))
    expect("\\flagged" in flagset(f[u[2]]["FLAGS"]), "changed flags not reported")
    expect_eq(select_info(r)["exists"], 4, "EXISTS")
    Q.ok("UNSELECT")
    # with known-uids the VANISHED set is limited to those UIDs: exactly the expunged ones
    r = Q.ok("SELECT %s (QRESYNC (%d %d %s))" % (q(mbox), v, h, fmt_set(u)))
    van = r.of("VANISHED")
    expect(len(van) == 1, "want one VANISHED response with known-uids")
    expect_eq(set(parse_set(van[0].args[1])), {u[1], u[3]}, "VANISHED (EARLIER) with known-uids")
    Q.ok("UNSELECT")
    # a wrong UIDVALIDITY: a plain full SELECT, no VANISHED
    r = Q.ok("SELECT %s (QRESYNC (%d %d))" % (q(mbox), v + 1, h))
    expect_eq(r.of("VANISHED"), [], "VANISHED despite a mismatched UIDVALIDITY")
    ctx.Q, ctx.qr_h, ctx.qr_new = Q, h, new


@check
def check_qresync_uid_fetch_vanished(ctx):
    Q, h = ctx.Q, ctx.qr_h
    u = ctx.uids[ctx.mb("qr")]
    r = Q.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h)
    van = r.of("VANISHED")
    expect(len(van) == 1, "want one VANISHED response")
    expect(isinstance(van[0].args[0], list) and str(van[0].args[0][0]).upper() == "EARLIER",
           "VANISHED for UID FETCH (VANISHED) must be (EARLIER)")
    vset = set(parse_set(van[0].args[1]))
    expect({u[1], u[3]} <= vset, "VANISHED (EARLIER) %s lacks %s" % (sorted(vset), [u[1], u[3]]))
    expect(not (vset & {u[0], u[2], u[4], ctx.qr_new}), "VANISHED lists existing messages")
    f = r.fetch_by_uid()
    expect({u[2], ctx.qr_new} <= set(f), "UID FETCH CHANGEDSINCE misses changed messages: %s" % sorted(f))


@check
def check_qresync_vanished_not_expunge(ctx):
    Q, B = ctx.Q, ctx.B
    mbox = ctx.mb("qr")
    u = ctx.uids[mbox]
    Q.ok("UID STORE %d +FLAGS.SILENT (\\Deleted)" % u[4])
    r = Q.ok("EXPUNGE")
    expect_eq(r.of("EXPUNGE"), [], "EXPUNGE responses with QRESYNC enabled")
    van = r.of("VANISHED")
    expect(len(van) == 1 and not isinstance(van[0].args[0], list), "want one '* VANISHED uid' (no EARLIER)")
    expect_eq(parse_set(van[0].args[0]), [u[4]], "VANISHED after EXPUNGE")
    # an expunge by another session shows up as VANISHED too
    B.ok("SELECT " + q(mbox))
    B.ok("UID STORE %d +FLAGS.SILENT (\\Deleted)" % u[0])
    B.ok("UID EXPUNGE %d" % u[0])
    B.ok("UNSELECT")
    r = Q.ok("NOOP")
    expect_eq(r.of("EXPUNGE"), [], "EXPUNGE responses with QRESYNC enabled (other session)")
    vs = [uid for x in r.of("VANISHED") for uid in parse_set(x.args[-1])]
    expect_eq(vs, [u[0]], "VANISHED after another session's expunge")
    # and MOVE reports VANISHED as well
    r = Q.ok("UID MOVE %d %s" % (ctx.qr_new, q(ctx.mb("dest"))))
    expect_eq(r.of("EXPUNGE"), [], "EXPUNGE after MOVE with QRESYNC enabled")
    vs = [uid for x in r.of("VANISHED") for uid in parse_set(x.args[-1])]
    expect_eq(vs, [ctx.qr_new], "VANISHED after MOVE")
    Q.close()


# ---- bad input --------------------------------------------------------------

@check
def check_bad_commands(ctx):
    c = ctx.connect("X")
    c.ok("SELECT " + q(ctx.mb("search")))
    for bad in ["NOSUCHCOMMAND foo", "FETCH", "FETCH 1 (FLAGS", "FETCH x:y FLAGS", 'SELECT "unterminated',
                "UID FROB 1", "STORE 1 +FLAGS (\\Seen", "SEARCH NOSUCHKEY", "LOGIN a"]:
        r = c.cmd(bad)
        expect_eq(r.status, "BAD", "response to malformed %r" % bad)
    c.ok("NOOP")
    f = c.ok("FETCH 1 UID").fetch_by_seq()
    expect_eq(int(f[1]["UID"]), ctx.search[0]["uid"], "FETCH after BADs")
    c.close()


@check
def check_wrong_state(ctx):
    c = ctx.connect("Y", login=False)
    c.not_ok("SELECT INBOX")
    c.not_ok("FETCH 1 FLAGS")
    c.ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    c.not_ok("LOGIN ", q(ctx.args.user), " ", q(ctx.args.password))
    c.not_ok("FETCH 1 FLAGS")
    c.ok("NOOP")
    c.close()


@check
def check_garbage_line(ctx):
    c = ctx.connect("Z")
    c.send(b")*( this line has no valid tag\r\n")
    r = c.read()
    expect(r.tag == "*" and r.name in ("BAD", "BYE"), "want untagged BAD or BYE, got %r" % r)
    if r.name == "BYE":
        line = c.imap.readline()
        expect(line == b"", "connection not closed after BYE")
        c.closed = True
        return
    c.ok("NOOP")
    c.close()


@check
def check_logout(ctx):
    c = ctx.connect("V")
    tag = c.next_tag()
    c.send(tag.encode() + b" LOGOUT\r\n")
    first = c.read()
    expect(first.tag == "*" and first.name == "BYE", "LOGOUT: want untagged BYE first, got %r" % first)
    r = c.read()
    expect(r.tag == tag and r.name == "OK", "LOGOUT: want tagged OK after BYE, got %r" % r)
    expect_eq(c.imap.readline(), b"", "data after LOGOUT (connection should be closed)")
    c.closed = True


# ---------------------------------------------------------------------------

def cleanup(ctx):
    if not ctx.root:
        return
    try:
        c = ctx.connect("R")
        r = c.ok('LIST "" ' + q(ctx.root + "*"))
        names = sorted({e[2] for e in list_entries(r) if e[2] == ctx.root or e[2].startswith(ctx.root + "/")},
                       key=lambda n: -n.count("/"))
        for n in names:
            c.cmd("UNSUBSCRIBE " + q(n))
            c.cmd("DELETE " + q(n))
        r = c.ok('LIST "" ' + q(ctx.root + "*"))
        left = [e[2] for e in list_entries(r)]
        c.close()
        if left:
            print("warning: left behind: %s" % left)
        else:
            print("ok cleanup")
    except Exception as e:
        print("warning: cleanup failed: %s" % e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--expect-loopback-plaintext", action="store_true")
    ap.add_argument("--keep-going", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print every protocol line")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    ctx = Ctx(args)
    failed = []
    try:
        for name, fn in CHECKS:
            mark = len(TRANSCRIPT)
            try:
                fn(ctx)
                print("ok %s" % name, flush=True)
            except Exception as e:
                failed.append(name)
                why = str(e) if isinstance(e, Failure) else "%s: %s" % (type(e).__name__, e)
                print("FAIL %s: %s" % (name, why), flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc(limit=4, file=sys.stdout)
                print("--- last protocol lines ---")
                for line in list(TRANSCRIPT)[-40:]:
                    print("   " + line)
                print("---", flush=True)
                if not args.keep_going:
                    break
    finally:
        for c in ctx.conns:
            if c is not None:
                c.close()
        cleanup(ctx)
    if failed:
        print("%d checks failed: %s" % (len(failed), " ".join(failed)))
        sys.exit(1)
    print("all %d checks passed" % len(CHECKS))


if __name__ == "__main__":
    main()
