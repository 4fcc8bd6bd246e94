#!/usr/bin/env python3
"""Bulk TCP transfer with an integrity check, for tests and the demo.

  tcp_transfer.py serve PORT            accept one connection, print "<bytes> <sha256>"
  tcp_transfer.py send HOST PORT BYTES  send BYTES of random data, print "<bytes> <sha256>"
"""
import hashlib
import os
import socket
import sys


def serve(port):
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(60)
        conn, _ = srv.accept()
        conn.settimeout(60)
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


def send(host, port, size):
    digest, total = hashlib.sha256(), 0
    with socket.create_connection((host, port), timeout=60) as conn:
        while total < size:
            chunk = os.urandom(min(1 << 16, size - total))
            conn.sendall(chunk)
            digest.update(chunk)
            total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
