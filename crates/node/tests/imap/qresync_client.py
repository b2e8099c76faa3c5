#!/usr/bin/env python3
"""A QRESYNC client (Python's imaplib) whose cache survives between runs, so
that a test can move it from server to server.

    qresync_client.py PORT USER PASSWORD STATE.json

Loads its cache of INBOX (UIDVALIDITY, HIGHESTMODSEQ, UID -> flags) from
STATE.json if it exists, SELECTs INBOX with QRESYNC (its UIDVALIDITY, its
HIGHESTMODSEQ and its known UIDs), applies the VANISHED and FETCH responses
to the cache, then checks on the same connection that the cache equals a
full `UID FETCH 1:* (FLAGS)` (no under-report) and that HIGHESTMODSEQ did
not go down. Saves the cache; prints one JSON line: how many FETCH and
VANISHED UIDs the resync reported, and the new HIGHESTMODSEQ. Exits 1 on a
failed check, with the reason on stderr.
"""
import imaplib
import json
import re
import sys


def uid_set(text):
    out = set()
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.update(range(min(a, b), max(a, b) + 1))
        else:
            out.add(int(part))
    return out


def compress(uids):
    ranges = []
    for u in sorted(uids):
        if ranges and ranges[-1][1] + 1 == u:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def flags_of(item):
    m = re.search(rb"UID (\d+)", item)
    f = re.search(rb"FLAGS \(([^)]*)\)", item)
    if not m or not f:
        return None
    flags = sorted(x for x in f.group(1).decode().split() if x != "\\Recent")
    return int(m.group(1)), " ".join(flags)


def take(conn, key):
    return conn.untagged_responses.pop(key, [])


def main():
    port, user, password, path = sys.argv[1:5]
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = None
    conn = imaplib.IMAP4("127.0.0.1", int(port))
    conn.login(user, password)
    typ, _ = conn.enable("QRESYNC")
    assert typ == "OK", typ
    cache = {}
    if state:
        cache = {int(k): v for k, v in state["flags"].items()}
        known = compress(cache)
        params = f"{state['validity']} {state['modseq']}" + (f" {known}" if known else "")
        arg = f"INBOX (QRESYNC ({params}))"
    else:
        arg = "INBOX"
    typ, data = conn._simple_command("SELECT", arg)
    assert typ == "OK", (typ, data)
    conn.state = "SELECTED"  # imaplib does not know a SELECT it did not send itself
    validity = int(take(conn, "UIDVALIDITY")[-1])
    highest = int(take(conn, "HIGHESTMODSEQ")[-1])
    vanished, fetched = set(), 0
    if state and validity != state["validity"]:
        cache = {}  # a new UIDVALIDITY: nothing cached holds
    for v in take(conn, "VANISHED"):
        text = v.decode() if isinstance(v, bytes) else v
        vanished |= uid_set(text.replace("(EARLIER)", "").strip())
    for item in take(conn, "FETCH"):
        parsed = flags_of(item if isinstance(item, bytes) else item.encode())
        if parsed:
            cache[parsed[0]] = parsed[1]
            fetched += 1
    for u in vanished:
        cache.pop(u, None)
    if state is None or validity != state["validity"]:
        cache = {}
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        for item in data:
            parsed = flags_of(item) if isinstance(item, bytes) else None
            if parsed:
                cache[parsed[0]] = parsed[1]
    take(conn, "FETCH")
    # The check: a full sync on the same connection.
    full = {}
    typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK", typ
    for item in data:
        parsed = flags_of(item) if isinstance(item, bytes) else None
        if parsed:
            full[parsed[0]] = parsed[1]
    conn.logout()
    failed = []
    if state and validity == state["validity"] and highest < state["modseq"]:
        failed.append(f"HIGHESTMODSEQ went down from {state['modseq']} to {highest}")
    if cache != full:
        missing = {u: full[u] for u in full if cache.get(u) != full[u]}
        stale = sorted(set(cache) - set(full))
        failed.append(f"under-report: differing {missing}, stale {stale}")
    with open(path, "w") as f:
        json.dump({"validity": validity, "modseq": highest, "flags": {str(k): v for k, v in cache.items()}}, f)
    print(json.dumps({"fetched": fetched, "vanished": len(vanished), "modseq": highest, "messages": len(full)}))
    if failed:
        print("; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
