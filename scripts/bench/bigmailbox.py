#!/usr/bin/env python3
"""bigmailbox.py: logins in a loop on one big mailbox, timed as a user sees it.

Each session: connect, greeting, USER, then the clock runs from sending PASS
to the STAT reply (PASS and STAT are sent together, so the time is what the
server needs to open the mailbox and answer), then LIST and UIDL are each
timed from the command to the end of the multi-line reply (and checked,
after the clock stopped: one line per message, as many as STAT said), then
QUIT. One session at a time: POP3 locks a mailbox for the session.

The client reads as a fast client does (see `Pop3`). An earlier version
appended each receive to an immutable bytes object and searched the whole
buffer again after each one: O(reply bytes x receives) in the client, which
made a 1.2 MB UIDL listing of 20,000 messages look 3x slower than a 0.26 MB
LIST, whatever the server did. The clock stops when the terminator is in,
before the client copies the body out of its buffer (that copy alone was
~1.2 ms of a 1.3 MB UIDL listing: page faults of fresh memory).

Prints one JSON line:
  {"kind": "big", "server": ..., "label": ..., "messages": N,
   "sessions": S, "pass_to_stat_ms": [...], "list_ms": [...], "uidl_ms": [...],
   "median": {"pass_to_stat_ms": x, "list_ms": y, "uidl_ms": z}}

Standard library only. Usage:
  bigmailbox.py --addr 127.0.0.1:110 --user big-w --password pw --sessions 20
                [--server NAME] [--label steady] [--commands LIST,UIDL]
"""

import argparse
import json
import socket
import statistics
import sys
import time


class Pop3:
    """A POP3 client that reads the way a fast client does: big receives
    into one growing buffer, the terminator looked for only in the bytes
    that just arrived, lines split once the reply is whole (so a long
    listing costs the client O(bytes), not O(bytes x receives))."""

    def __init__(self, addr, timeout):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.buf = bytearray()
        self.chunk = bytearray(1 << 20)
        self.view = memoryview(self.chunk)

    def send(self, data):
        self.sock.sendall(data)

    def fill(self):
        """Appends one receive to the buffer; returns the old length."""
        n = self.sock.recv_into(self.view)
        if n == 0:
            raise ConnectionError("server closed the connection")
        start = len(self.buf)
        self.buf += self.view[:n]
        return start

    def line(self):
        searched = 0
        while True:
            end = self.buf.find(b"\r\n", max(searched - 1, 0))
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            searched = len(self.buf)
            self.fill()

    def ok(self, what):
        line = self.line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{what}: {line!r}")
        return line

    def multiline_raw(self, what):
        """The body of a multi-line reply up to its terminator, unsplit, and
        the time its last byte was in (perf_counter). The clock is read
        before the body is copied out: copying 1.3 MB of listing into fresh
        memory costs this client over a millisecond (page faults), which is
        the client's work, not the server's answer."""
        self.ok(what)
        if self.buf.startswith(b".\r\n"):
            done = time.perf_counter()
            del self.buf[:3]
            return b"", done
        searched = 0
        while True:
            # "\r\n.\r\n" may straddle two receives: look back 4 bytes.
            end = self.buf.find(b"\r\n.\r\n", max(searched - 4, 0))
            if end >= 0:
                done = time.perf_counter()
                body = bytes(self.buf[:end + 2])
                del self.buf[:end + 5]
                return body, done
            searched = len(self.buf)
            self.fill()

    def close(self):
        self.sock.close()


def lines_of(body):
    """The lines of a listing body (each ends in CRLF)."""
    return body.split(b"\r\n")[:-1] if body else []


def session(addr, user, password, timeout, commands):
    c = Pop3(addr, timeout)
    try:
        c.ok("greeting")
        c.send(f"USER {user}\r\n".encode())
        c.ok("USER")
        start = time.perf_counter()
        c.send(f"PASS {password}\r\nSTAT\r\n".encode())
        c.ok("PASS")
        stat = c.ok("STAT")
        pass_to_stat = time.perf_counter() - start
        count = int(stat.split()[1])
        timings = {"pass_to_stat_ms": pass_to_stat * 1000}
        for cmd in commands:
            start = time.perf_counter()
            c.send(f"{cmd}\r\n".encode())
            body, done = c.multiline_raw(cmd)
            timings[f"{cmd.lower()}_ms"] = (done - start) * 1000
            # Checked after the clock stopped: one line per message.
            lines = lines_of(body)
            if len(lines) != count:
                raise RuntimeError(f"{cmd}: {len(lines)} lines, STAT said {count}")
            first = lines[0].split(b" ") if lines else []
            if lines and (len(first) != 2 or first[0] != b"1"):
                raise RuntimeError(f"{cmd}: bad first line {lines[0]!r}")
        c.send(b"QUIT\r\n")
        c.ok("QUIT")
        return count, timings
    finally:
        c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--server", default="?")
    p.add_argument("--label", default="steady")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--commands", default="LIST,UIDL",
                   help="listings to time after STAT, comma-separated (LIST, UIDL; empty: none)")
    a = p.parse_args()
    commands = [c for c in a.commands.upper().split(",") if c]
    if any(c not in ("LIST", "UIDL") for c in commands):
        sys.exit("bigmailbox.py: --commands takes LIST and UIDL")
    host = a.addr.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        sys.exit("bigmailbox.py: loopback addresses only")
    series = {"pass_to_stat_ms": [], **{f"{c.lower()}_ms": [] for c in commands}}
    messages = None
    for _ in range(a.sessions):
        count, timings = session(a.addr, a.user, a.password, a.timeout, commands)
        if messages is not None and count != messages:
            sys.exit(f"bigmailbox.py: the mailbox changed: {messages} then {count} messages")
        messages = count
        for key in series:
            series[key].append(round(timings[key], 3))
    print(json.dumps({
        "kind": "big", "server": a.server, "label": a.label, "user": a.user,
        "messages": messages, "sessions": a.sessions, **series,
        "median": {k: round(statistics.median(v), 3) for k, v in series.items()},
    }))


if __name__ == "__main__":
    main()
