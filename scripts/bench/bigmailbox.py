#!/usr/bin/env python3
"""bigmailbox.py: logins in a loop on one big mailbox, timed as a user sees it.

Each session: connect, greeting, USER, then the clock runs from sending PASS
to the STAT reply (PASS and STAT are sent together, so the time is what the
server needs to open the mailbox and answer), then LIST and UIDL are each
timed from the command to the end of the multi-line reply (and checked:
one line per message, as many as STAT said), then QUIT. One session at a
time: POP3 locks a mailbox for the session.

Prints one JSON line:
  {"kind": "big", "server": ..., "label": ..., "messages": N,
   "sessions": S, "pass_to_stat_ms": [...], "list_ms": [...], "uidl_ms": [...],
   "median": {"pass_to_stat_ms": x, "list_ms": y, "uidl_ms": z}}

Standard library only. Usage:
  bigmailbox.py --addr 127.0.0.1:110 --user big-w --password pw --sessions 20
                [--server NAME] [--label steady]
"""

import argparse
import json
import socket
import statistics
import sys
import time


class Pop3:
    def __init__(self, addr, timeout):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def ok(self, what):
        line = self.line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{what}: {line!r}")
        return line

    def multiline(self, what):
        """Lines of a multi-line reply, without the terminator."""
        self.ok(what)
        lines = []
        while True:
            # Read big chunks: a 20,000-line listing is ~400 KB.
            end = self.buf.find(b"\r\n.\r\n")
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return lines
            if end >= 0:
                lines.extend(self.buf[:end].split(b"\r\n"))
                self.buf = self.buf[end + 5:]
                return lines
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection in a listing")
            self.buf += chunk

    def close(self):
        self.sock.close()


def session(addr, user, password, timeout):
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
        timings = [pass_to_stat]
        for cmd in ("LIST", "UIDL"):
            start = time.perf_counter()
            c.send(f"{cmd}\r\n".encode())
            lines = c.multiline(cmd)
            timings.append(time.perf_counter() - start)
            if len(lines) != count:
                raise RuntimeError(f"{cmd}: {len(lines)} lines, STAT said {count}")
        c.send(b"QUIT\r\n")
        c.ok("QUIT")
        return count, [t * 1000 for t in timings]
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
    a = p.parse_args()
    host = a.addr.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        sys.exit("bigmailbox.py: loopback addresses only")
    series = {"pass_to_stat_ms": [], "list_ms": [], "uidl_ms": []}
    messages = None
    for _ in range(a.sessions):
        count, timings = session(a.addr, a.user, a.password, a.timeout)
        if messages is not None and count != messages:
            sys.exit(f"bigmailbox.py: the mailbox changed: {messages} then {count} messages")
        messages = count
        for key, t in zip(series, timings):
            series[key].append(round(t, 3))
    print(json.dumps({
        "kind": "big", "server": a.server, "label": a.label, "user": a.user,
        "messages": messages, "sessions": a.sessions, **series,
        "median": {k: round(statistics.median(v), 3) for k, v in series.items()},
    }))


if __name__ == "__main__":
    main()
