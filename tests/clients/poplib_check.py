#!/usr/bin/env python3
"""Drives a POP3 server with Python's poplib, the way a real client does,
and checks every reply against the Maildir on disk.

usage: poplib_check.py HOST PORT USER PASSWORD MAILDIR

Message bodies are matched to files through UIDL (shardpop's UIDL is the
Maildir base name). Exits non-zero on the first mismatch; prints one line
per check so the calling test can assert how many ran.
"""
import os
import poplib
import sys


def crlf(stored: bytes) -> bytes:
    out = bytearray()
    prev = 0
    for b in stored:
        if b == 0x0A and prev != 0x0D:
            out.append(0x0D)
        out.append(b)
        prev = b
    return bytes(out)


def files_by_base(maildir):
    found = {}
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(maildir, sub)):
            if not name.startswith("."):
                found[name.split(":")[0]] = os.path.join(maildir, sub, name)
    return found


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok {what}", flush=True)


def main():
    host, port, user, password, maildir = sys.argv[1:6]
    p = poplib.POP3(host, int(port), timeout=20)
    check(p.getwelcome().startswith(b"+OK"), "greeting")
    caps = p.capa()
    for tag in ("TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES"):
        check(tag in caps, f"capa {tag}")
    check(p.user(user).startswith(b"+OK"), "user")
    check(p.pass_(password).startswith(b"+OK"), "pass")
    count, size = p.stat()
    resp, listing, _ = p.list()
    check(resp.startswith(b"+OK") and len(listing) == count, "list count")
    sizes = {int(a): int(b) for a, b in (line.split() for line in listing)}
    check(sum(sizes.values()) == size, "stat size equals list sum")
    resp, uidls, _ = p.uidl()
    uid = {int(a): b.decode() for a, b in (line.split() for line in uidls)}
    check(len(set(uid.values())) == count, "uidls unique")
    files = files_by_base(maildir)
    # poplib refuses lines over 2048 bytes; big bodies are fine line by line.
    for n in range(1, count + 1):
        with open(files[uid[n]], "rb") as f:
            stored = f.read()
        want = crlf(stored)
        if want and not want.endswith(b"\r\n"):
            want += b"\r\n"
        check(p.list(n).split()[2] == str(len(crlf(stored))).encode(), f"list {n}")
        check(p.uidl(n).split()[2].decode() == uid[n], f"uidl {n}")
        resp, lines, octets = p.retr(n)
        got = b"".join(line + b"\r\n" for line in lines)
        check(got == want, f"retr {n} byte-exact ({len(want)} bytes)")
        resp, lines, _ = p.top(n, 0)
        head = b"".join(line + b"\r\n" for line in lines)
        check(want.startswith(head), f"top {n} 0 is a prefix")
    check(p.noop().startswith(b"+OK"), "noop")
    if count:
        check(p.dele(1).startswith(b"+OK"), "dele 1")
        try:
            p.retr(1)
            check(False, "retr of a deleted message fails")
        except poplib.error_proto as e:
            check(str(e).startswith("b'-ERR"), "retr of a deleted message fails")
        check(p.rset().startswith(b"+OK"), "rset")
        check(p.stat() == (count, size), "rset restores stat")
    try:
        p.retr(count + 1)
        check(False, "retr past the end fails")
    except poplib.error_proto:
        check(True, "retr past the end fails")
    check(p.quit().startswith(b"+OK"), "quit")
    print(f"checked {count} messages", flush=True)


if __name__ == "__main__":
    main()
