#!/usr/bin/env python3
"""UTF8=ACCEPT (RFC 6855) with Python's imaplib against a running server
(stdlib only): one connection enables it (imaplib then writes its
arguments in UTF-8), another does not (names in modified UTF-7); both see
one mailbox, each in its own encoding.

Usage: imaplib_utf8.py --host H --port P --user U --password PW

Each check prints "ok <name>"; a failure raises (exit 1).  Everything is
done under a fresh top-level mailbox x<random>, deleted at the end.
imaplib's own APPEND in UTF-8 mode puts `UTF8 (` ... `)` inside an
ordinary literal (so the server would store those bytes): the APPEND
with `UTF8 (~{n})` is sent on imaplib's connection with its send/readline.
"""

import argparse
import imaplib
import random
import re
import sys


def check(cond, why):
    if not cond:
        raise AssertionError(why)


def ok(typ_data, what):
    typ, data = typ_data
    check(typ == "OK", "%s: %s %r" % (what, typ, data))
    return data


def raw(M, pieces):
    """One command sent piece by piece: bytes after a literal marker are
    its data (the server's '+' awaited). Returns (untagged, tagged line)."""
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
        if line.startswith(tag + b" "):
            return untagged, line
        untagged.append(line)


def main():
    ap = argparse.ArgumentParser()
    for a in ("--host", "--port", "--user", "--password"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    U = imaplib.IMAP4(args.host, int(args.port))
    A = imaplib.IMAP4(args.host, int(args.port))
    ok(U.login(args.user, args.password), "LOGIN")
    ok(A.login(args.user, args.password), "LOGIN")
    caps = ok(U.capability(), "CAPABILITY")[0].decode().upper().split()
    check("UTF8=ACCEPT" in caps, "UTF8=ACCEPT not advertised: %s" % caps)
    ok(U.enable("UTF8=ACCEPT"), "ENABLE UTF8=ACCEPT")
    check(U.utf8_enabled, "imaplib did not switch to UTF-8")
    root = "x%d" % random.randrange(10**9)
    drafts = root + "/Entw\u00fcrfe"
    drafts7 = root + "/Entw&APw-rfe"
    try:
        ok(U.create('"%s"' % drafts), "CREATE (UTF-8)")
        data = ok(U.list('""', '"%s/*"' % root), "LIST (UTF-8)")
        check(any(l.decode("utf-8").endswith('"%s"' % drafts) for l in data), "LIST in UTF-8: %r" % data)
        data = ok(A.list('""', '"%s/*"' % root), "LIST (modified UTF-7)")
        check(any(l.endswith(drafts7.encode()) for l in data), "LIST in modified UTF-7: %r" % data)
        print("ok names")

        msg = "From: J\u00f6rg <j@example.com>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n".encode()
        _, tagged = raw(U, [b'APPEND "%s" UTF8 (~{%d}\r\n' % (drafts.encode(), len(msg)), msg, b")"])
        check(b" OK [APPENDUID " in tagged, "APPEND UTF8: %r" % tagged)
        data = ok(A.status(drafts7, "(MESSAGES)"), "STATUS (modified UTF-7)")
        check(b"(MESSAGES 1)" in data[0], "STATUS: %r" % data)
        _, tagged = raw(A, [b"APPEND %s {%d}\r\n" % (drafts7.encode(), len(msg)), msg])
        check(b" NO " in tagged, "8-bit header without ENABLE: %r" % tagged)
        print("ok append_utf8")

        ok(U.select('"%s"' % drafts), "SELECT (UTF-8)")
        data = ok(U.search(None, "SUBJECT", '"Gr\u00fc\u00dfe"'), "SEARCH (UTF-8)")
        check(data[0].split() == [b"1"], "SEARCH: %r" % data)
        data = ok(U.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), "FETCH")
        check("Gr\u00fc\u00dfe".encode() in data[0][1], "FETCH: %r" % data)
        ok(U.close(), "CLOSE")
        ok(U.rename('"%s"' % drafts, '"%s/\u00c9bauches"' % root), "RENAME (UTF-8)")
        data = ok(A.list('""', '"%s/*"' % root), "LIST")
        check(any(l.endswith(b"/&AMk-bauches") for l in data), "RENAME seen in modified UTF-7: %r" % data)
        print("ok search_and_rename")
    finally:
        for name in (root + "/&AMk-bauches", drafts7, root):
            try:
                A.delete(name)
            except Exception:
                pass
        U.logout()
        A.logout()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL %s" % e)
        sys.exit(1)
