#!/usr/bin/env python3
"""Runs a command, relays stdin/stdout to it, counts bytes each way.
Usage: count.py COUNTS_FILE CMD ARGS..."""
import os, subprocess, sys, threading
out_file, cmd = sys.argv[1], sys.argv[2:]
p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
counts = [0, 0]
def pump(src, dst, i, close):
    while True:
        b = os.read(src.fileno(), 65536)
        if not b:
            break
        counts[i] += len(b)
        dst.write(b); dst.flush()
    if close:
        dst.close()
t1 = threading.Thread(target=pump, args=(sys.stdin.buffer, p.stdin, 0, True)); t1.daemon = True; t1.start()
pump(p.stdout, sys.stdout.buffer, 1, False)
p.wait()
with open(out_file, "w") as f:
    f.write(f"{counts[0]} {counts[1]}\n")
sys.exit(p.returncode)
