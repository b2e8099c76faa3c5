#!/usr/bin/env python3
"""The IMAP extensions a client uses beyond the base protocol, with Python's
imaplib against a running server (stdlib only):

  OBJECTID (RFC 8474), APPENDLIMIT (RFC 7889), CREATE-SPECIAL-USE (RFC 6154),
  BINARY's APPEND (RFC 3516), MULTIAPPEND (RFC 3502), PREVIEW (RFC 8970) and
  SAVEDATE (RFC 8514).

Usage: imaplib_extensions.py --host H --port P --user U --password PW

Each check prints "ok <name>"; a failure raises (exit 1).  Everything is
done under a fresh top-level mailbox x<random>, deleted at the end.  What
imaplib has no call for (literal8, several messages in one APPEND) is sent
on imaplib's own connection with its send/readline.
"""

import argparse
import imaplib
import random
import re
import sys

OBJECTID = rb"[A-Za-z0-9_-]{1,255}"


def check(cond, why):
    if not cond:
        raise AssertionError(why)


def ok(typ_data, what):
    typ, data = typ_data
    check(typ == "OK", "%s: %s %r" % (what, typ, data))
    return data


def raw(M, pieces):
    """One command sent piece by piece: bytes after a literal marker are
    its data (the server's '+' awaited for a synchronising one). Returns
    (untagged lines, tagged line)."""
    tag = M._new_tag()
    untagged = []
    out = tag + b" "
    for p in pieces:
        out += p
        if re.search(rb"\{\d+\}\r\n$", out):
            M.send(out)
            out = b""
            while True:
                line = M.readline()
                if line.startswith(b"+"):
                    break
                if line.startswith(tag + b" "):
                    return untagged, line
                untagged.append(line)
    M.send(out + b"\r\n")
    while True:
        line = M.readline()
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        if m:
            line += M.read(int(m.group(1))) + M.readline()
        if line.startswith(tag + b" "):
            return untagged, line
        untagged.append(line)


def main():
    ap = argparse.ArgumentParser()
    for a in ("--host", "--port", "--user", "--password"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    M = imaplib.IMAP4(args.host, int(args.port))
    ok(M.login(args.user, args.password), "LOGIN")
    caps = ok(M.capability(), "CAPABILITY")[0].decode().upper().split()
    for c in ("OBJECTID", "CREATE-SPECIAL-USE", "BINARY", "MULTIAPPEND"):
        check(c in caps, "%s not advertised: %s" % (c, caps))
    limits = [c for c in caps if c.startswith("APPENDLIMIT=")]
    check(len(limits) == 1 and limits[0].split("=")[1].isdigit(), "APPENDLIMIT=n: %s" % caps)
    limit = int(limits[0].split("=")[1])
    root = "x%d" % random.randrange(10**9)
    sent = root + "/Sent"
    try:
        # CREATE-SPECIAL-USE, as a client making its Sent folder does; OBJECTID's MAILBOXID with it.
        data = ok(M.create('%s (USE (\\Sent))' % sent), "CREATE (USE (\\Sent))")
        m = re.search(rb"\[MAILBOXID \((" + OBJECTID + rb")\)\]", data[0])
        check(m, "CREATE: no [MAILBOXID]: %r" % data)
        sent_id = m.group(1)
        typ, data = M.create('%s/Bad (USE (\\Bogus))' % root)
        check(typ == "NO" and b"[USEATTR]" in data[0], "unknown use: %s %r" % (typ, data))
        data = ok(M.list(root + "/", "*"), "LIST")
        check(any(b"\\Sent" in l and l.endswith(b"/Sent") for l in data), "LIST shows \\Sent: %r" % data)
        check(not any(l.endswith(b"/Bad") for l in data), "a refused CREATE created nothing: %r" % data)
        print("ok create_special_use")

        # APPENDLIMIT by STATUS; OBJECTID's MAILBOXID by STATUS, kept by RENAME.
        data = ok(M.status(sent, "(MAILBOXID APPENDLIMIT MESSAGES)"), "STATUS")
        check(b"MAILBOXID (%s)" % sent_id in data[0], "STATUS MAILBOXID: %r" % data)
        check(b"APPENDLIMIT %d" % limit in data[0], "STATUS APPENDLIMIT: %r" % data)
        ok(M.rename(sent, root + "/Sent2"), "RENAME")
        sent = root + "/Sent2"
        data = ok(M.status(sent, "(MAILBOXID)"), "STATUS")
        check(b"MAILBOXID (%s)" % sent_id in data[0], "RENAME keeps MAILBOXID: %r" % data)
        print("ok appendlimit_and_mailboxid")

        # MULTIAPPEND: a client saving several messages at once.
        msgs = [b"From: a@example.com\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
        pieces = [b"APPEND %s (\\Seen) {%d}\r\n" % (sent.encode(), len(msgs[0])), msgs[0]]
        for i, msg in enumerate(msgs[1:]):
            pieces += [b" () \"01-Jan-2020 10:00:0%d +0000\" {%d}\r\n" % (i, len(msg)), msg]
        _, tagged = raw(M, pieces)
        m = re.search(rb"OK \[APPENDUID (\d+) ([0-9:,]+)\]", tagged)
        check(m, "MULTIAPPEND: %r" % tagged)
        check(m.group(2) in (b"1:3", b"1,2,3"), "three UIDs in order: %r" % tagged)
        # One bad message: none stored.
        _, tagged = raw(M, [b"APPEND %s {%d+}\r\n" % (sent.encode(), len(msgs[0])), msgs[0],
                            b" (\\Seen) \"not a date\" {1+}\r\nx"])
        check(b" BAD " in tagged, "MULTIAPPEND with a bad message: %r" % tagged)
        # A zero-length message cancels the whole APPEND (RFC 3502 §6.3.11).
        _, tagged = raw(M, [b"APPEND %s {%d}\r\n" % (sent.encode(), len(msgs[0])), msgs[0], b" {0}\r\n", b""])
        check(b" NO " in tagged, "MULTIAPPEND cancelled by {0}: %r" % tagged)
        data = ok(M.status(sent, "(MESSAGES)"), "STATUS")
        check(b"MESSAGES 3" in data[0], "nothing of a failed MULTIAPPEND stored: %r" % data)
        print("ok multiappend")

        # BINARY: APPEND of a literal8, read back exactly with BINARY[].
        blob = bytes(range(256)) * 4
        bmsg = (b"From: a@example.com\r\nSubject: bin\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: binary\r\n\r\n" + blob)
        _, tagged = raw(M, [b"APPEND %s ~{%d}\r\n" % (sent.encode(), len(bmsg)), bmsg])
        check(re.search(rb" OK \[APPENDUID \d+ 4\]", tagged), "APPEND literal8: %r" % tagged)
        _, tagged = raw(M, [b"APPEND %s {%d}\r\n" % (sent.encode(), len(bmsg)), bmsg])
        check(b" BAD " in tagged and b"literal8" in tagged, "NUL in a plain literal: %r" % tagged)
        ok(M.select(sent), "SELECT")
        untagged, tagged = raw(M, [b"UID FETCH 4 BINARY.PEEK[]"])
        check(b" OK" in tagged, "FETCH BINARY: %r" % tagged)
        got = b"".join(untagged)
        check(b"BINARY[] ~{%d}\r\n" % len(bmsg) in got and bmsg in got, "BINARY[] round trip: %r" % got[:200])
        typ, data = M.uid("FETCH", "4", "(BODY.PEEK[])")
        check(typ == "OK" and data[0][1] == bmsg.replace(b"\0", b"\x80"), "BODY[]: NUL shown as 0x80")
        print("ok binary")

        # PREVIEW, as a client listing messages asks for it.
        check("PREVIEW" in caps, "PREVIEW not advertised: %s" % caps)
        data = ok(M.fetch("1:4", "(PREVIEW)"), "FETCH PREVIEW")
        check(data[0] == b'1 (PREVIEW "body 0")', "PREVIEW: %r" % data)
        check(data[3] == b'4 (PREVIEW "")', "PREVIEW of no text: %r" % data)
        data = ok(M.fetch("2", "(PREVIEW (LAZY))"), "FETCH PREVIEW (LAZY)")
        check(data[0] == b'2 (PREVIEW "body 1")', "PREVIEW (LAZY): %r" % data)
        print("ok preview")

        # SAVEDATE without a stored save date (RFC 8514 §4.2, §4.3): NIL, and
        # SAVEDSINCE / SAVEDBEFORE on the internal date (messages 2 and 3 are
        # dated 1 Jan 2020, 1 and 4 today).
        check("SAVEDATE" in caps, "SAVEDATE not advertised: %s" % caps)
        data = ok(M.fetch("1", "(SAVEDATE)"), "FETCH SAVEDATE")
        check(data[0] == b"1 (SAVEDATE NIL)", "SAVEDATE: %r" % data)
        data = ok(M.search(None, "SAVEDBEFORE", "2-Jan-2020"), "SEARCH SAVEDBEFORE")
        check(data[0].split() == [b"2", b"3"], "SAVEDBEFORE: %r" % data)
        data = ok(M.search(None, "SAVEDATESUPPORTED"), "SEARCH SAVEDATESUPPORTED")
        check(data[0].split() == [], "SAVEDATESUPPORTED: %r" % data)
        print("ok savedate")

        # OBJECTID: EMAILID kept by COPY, THREADID NIL, SEARCH EMAILID; MAILBOXID on SELECT.
        check(M.response("MAILBOXID")[1] == [b"(%s)" % sent_id], "SELECT: [MAILBOXID]: %r" % (M.response("MAILBOXID"),))
        data = ok(M.fetch("1", "(EMAILID THREADID)"), "FETCH EMAILID")
        m = re.search(rb"EMAILID \((" + OBJECTID + rb")\) THREADID NIL", data[0])
        check(m, "FETCH EMAILID THREADID: %r" % data)
        eid = m.group(1)
        ok(M.create(root + "/Copy"), "CREATE")
        ok(M.copy("1", root + "/Copy"), "COPY")
        data = ok(M.search(None, "EMAILID", eid), "SEARCH EMAILID")
        check(data[0].split() == [b"1"], "SEARCH EMAILID: %r" % data)
        ok(M.select(root + "/Copy"), "SELECT")
        data = ok(M.fetch("1", "(EMAILID)"), "FETCH")
        check(b"EMAILID (%s)" % eid in data[0], "COPY keeps EMAILID: %r" % data)
        print("ok objectid")
        M.close()
    finally:
        for name in (root + "/Copy", root + "/Sent2", root + "/Sent", root):
            try:
                M.delete(name)
            except Exception:
                pass
        M.logout()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL %s" % e)
        sys.exit(1)
