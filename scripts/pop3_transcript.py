#!/usr/bin/env python3
"""Prints what a POP3 client sees of a mailbox, in a form two servers can be
diffed on: every data-bearing reply in full (STAT, LIST, UIDL, RETR and TOP
bodies exactly as on the wire, stuffing and terminator included) and only
the status (+OK/-ERR) of replies whose text is free-form.

usage: pop3_transcript.py HOST PORT USER PASSWORD
"""
import socket
import sys


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=30)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def multiline(self):
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line == b".\r\n":
                return b"".join(out)

    def cmd(self, text):
        self.s.sendall(text.encode() + b"\r\n")
        return self.line()


def status(line):
    return line.split(b" ", 1)[0].rstrip(b"\r\n")


def main():
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = Conn(host, port)
    out = sys.stdout.buffer
    out.write(b"> greeting " + status(c.line()) + b"\n")

    def show(cmd, full):
        reply = c.cmd(cmd)
        out.write(b"> " + cmd.encode() + b"\n")
        out.write((reply if full else status(reply) + b"\n"))
        return reply

    show("USER " + user, False)
    show("PASS " + password, False)
    stat = show("STAT", True)
    count = int(stat.split()[1])
    if show("LIST", False).startswith(b"+OK"):
        out.write(c.multiline())
    if show("UIDL", False).startswith(b"+OK"):
        out.write(c.multiline())
    for n in range(1, count + 1):
        show("LIST %d" % n, True)
        show("UIDL %d" % n, True)
        if show("RETR %d" % n, True).startswith(b"+OK"):
            out.write(c.multiline())
        for lines in (0, 2, 100):
            if show("TOP %d %d" % (n, lines), False).startswith(b"+OK"):
                out.write(c.multiline())
    for bad in ("RETR %d" % (count + 1), "RETR 0", "TOP 1", "LIST %d" % (count + 1)):
        show(bad, False)
    show("QUIT", False)


if __name__ == "__main__":
    main()
