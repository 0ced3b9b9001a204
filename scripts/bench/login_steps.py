#!/usr/bin/env python3
"""Latency of each step of a login session, one session at a time.

    scripts/bench/login_steps.py ADDR SESSIONS USERS_FILE [LABEL]

USERS_FILE is loadtest's (`user password` per line, as scripts/mkcorpus
writes it). Sessions run one after another with a 2 ms pause, rotating over
the first 64 users: connect to greeting, USER, PASS, STAT and QUIT are timed
from the request's send to the reply's last byte, and the medians (µs) are
printed on one line. With no concurrency the figures show what the server
does per step, not how sessions queue behind each other.
"""
import socket
import statistics
import sys
import time

STEPS = ("greet", "user", "pass", "stat", "quit")


def reply(sock):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def main():
    addr, sessions, users_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    label = sys.argv[4] if len(sys.argv) > 4 else addr
    host, port = addr.rsplit(":", 1)
    with open(users_file) as f:
        users = [line.split()[:2] for line in f if line.strip()][:64]
    times = {step: [] for step in STEPS}
    for i in range(sessions):
        user, password = users[i % len(users)]
        t = [time.perf_counter()]
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply(sock)
        t.append(time.perf_counter())
        for line in (f"USER {user}", f"PASS {password}", "STAT", "QUIT"):
            sock.sendall(line.encode() + b"\r\n")
            answer = reply(sock)
            if not answer.startswith(b"+OK"):
                raise SystemExit(f"{line.split()[0]}: {answer!r}")
            t.append(time.perf_counter())
        sock.close()
        for step, (a, b) in zip(STEPS, zip(t, t[1:])):
            times[step].append((b - a) * 1e6)
        time.sleep(0.002)
    print(label, " ".join(f"{s} {statistics.median(times[s]):.0f}" for s in STEPS))


if __name__ == "__main__":
    main()
