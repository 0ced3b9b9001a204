#!/usr/bin/env python3
"""Logs in with AUTH SCRAM-SHA-256 (RFC 5802, RFC 7677, RFC 5034 framing)
as a client would, then STATs. Prints each step; exits non-zero on failure.

usage: scram_login.py HOST PORT USER PASSWORD [initial]
"""
import base64
import hashlib
import hmac
import os
import socket
import sys


def main():
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    initial = len(sys.argv) > 5 and sys.argv[5] == "initial"
    s = socket.create_connection((host, port), timeout=20)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    cnonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), cnonce)
    client_first = "n,," + client_first_bare
    b64 = base64.b64encode(client_first.encode()).decode()
    if initial:
        s.sendall(("AUTH SCRAM-SHA-256 %s\r\n" % b64).encode())
    else:
        s.sendall(b"AUTH SCRAM-SHA-256\r\n")
        assert f.readline() == b"+ \r\n"
        s.sendall((b64 + "\r\n").encode())
    line = f.readline()
    if not line.startswith(b"+ "):
        print("refused at client-first:", line)
        sys.exit(2)
    server_first = base64.b64decode(line[2:].strip()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(cnonce), server_first
    salt = base64.b64decode(attrs["s"])
    iterations = int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ",".join([client_first_bare, server_first, without_proof])
    signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    client_final = without_proof + ",p=" + base64.b64encode(proof).decode()
    s.sendall((base64.b64encode(client_final.encode()).decode() + "\r\n").encode())
    line = f.readline()
    if not line.startswith(b"+ "):
        print("refused at client-final:", line.decode().strip())
        sys.exit(3)
    server_final = base64.b64decode(line[2:].strip()).decode()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message.encode(), hashlib.sha256).digest()).decode()
    assert server_final == "v=" + expected, "server signature does not verify"
    print("server verified")
    s.sendall(b"\r\n")
    line = f.readline()
    print(line.decode().strip())
    if not line.startswith(b"+OK"):
        sys.exit(4)
    s.sendall(b"STAT\r\n")
    print(f.readline().decode().strip())
    s.sendall(b"QUIT\r\n")
    f.readline()


if __name__ == "__main__":
    main()
