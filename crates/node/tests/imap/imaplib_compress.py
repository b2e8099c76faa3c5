#!/usr/bin/env python3
"""COMPRESS=DEFLATE (RFC 4978) from Python's imaplib: after COMPRESS, raw
DEFLATE (zlib with wbits=-15) both ways on the socket, a sync flush after
each command. LOGIN, SELECT, APPEND, FETCH and SEARCH go through it."""

import argparse
import imaplib
import random
import sys
import zlib

imaplib.Commands.setdefault("COMPRESS", ("NONAUTH", "AUTH", "SELECTED"))


def check(cond, why):
    if not cond:
        print("FAIL:", why)
        sys.exit(1)


def ok(typ_data, what):
    typ, data = typ_data
    check(typ == "OK", "%s: %s %r" % (what, typ, data))
    return data


class Deflated(imaplib.IMAP4):
    """imaplib with COMPRESS=DEFLATE: reads and writes through zlib."""

    z_out = None

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            # Nothing follows the OK until we send: the buffered reader holds nothing.
            self.z_out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.z_in = zlib.decompressobj(-15)
            self.z_buf = b""
        return typ, data

    def send(self, data):
        if self.z_out is not None:
            data = self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise self.abort("socket closed")
        self.z_buf += self.z_in.decompress(chunk)

    def read(self, size):
        if self.z_out is None:
            return super().read(size)
        while len(self.z_buf) < size:
            self._fill()
        out, self.z_buf = self.z_buf[:size], self.z_buf[size:]
        return out

    def readline(self):
        if self.z_out is None:
            return super().readline()
        while b"\n" not in self.z_buf:
            self._fill()
        i = self.z_buf.index(b"\n") + 1
        out, self.z_buf = self.z_buf[:i], self.z_buf[i:]
        return out


def main():
    ap = argparse.ArgumentParser()
    for a in ("--host", "--port", "--user", "--password"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    M = Deflated(args.host, int(args.port))
    try:
        M.compress()
        check(False, "COMPRESS before login was not BAD")
    except M.error as e:
        check("valid only once authenticated" in str(e), "COMPRESS before login: %s" % e)
    ok(M.login(args.user, args.password), "LOGIN")
    caps = ok(M.capability(), "CAPABILITY")[0].decode().upper().split()
    check("COMPRESS=DEFLATE" in caps, "COMPRESS=DEFLATE not advertised: %s" % caps)
    ok(M.compress(), "COMPRESS DEFLATE")
    caps = ok(M.capability(), "CAPABILITY (compressed)")[0].decode().upper().split()
    check("COMPRESS=DEFLATE" not in caps, "still advertised once on: %s" % caps)
    box = "z%d" % random.randrange(10**9)
    ok(M.create(box), "CREATE")
    body = b"Subject: squeezed\r\n\r\n" + b"hello deflate " * 5000 + b"\r\n"
    ok(M.append(box, None, None, body), "APPEND")
    ok(M.select(box), "SELECT")
    data = ok(M.fetch("1", "(UID BODY.PEEK[])"), "FETCH")
    check(data[0][1] == body, "FETCH body differs (%d bytes back)" % len(data[0][1]))
    data = ok(M.search(None, "SUBJECT", "squeezed"), "SEARCH")
    check(data[0] == b"1", "SEARCH: %r" % data)
    typ, data = M.compress()
    check(typ == "NO" and b"COMPRESSIONACTIVE" in data[0], "second COMPRESS: %s %r" % (typ, data))
    ok(M.delete(box) if M.close()[0] == "OK" else ("NO", []), "DELETE")
    M.logout()
    print("ok compress_deflate")


if __name__ == "__main__":
    main()
