#!/usr/bin/env python3
"""A tiny HTTP server and client for the gateway tests (no curl needed).

  http_probe.py serve PORT NAME [LIFETIME]
      answer every GET on PORT with NAME, or with the client's address (ip only) when NAME is
      the literal "client-ip"; prints "ready" once listening; exits after LIFETIME seconds
      (default 600) so a forgotten server never lingers
  http_probe.py get URL COUNT TIMEOUT [TOTAL]
      COUNT GETs of URL, each on a fresh TCP connection (a new source port each time), each
      bounded by TIMEOUT seconds; prints one line per request: the body, or "ERR". The whole
      run is bounded by TOTAL seconds (default TIMEOUT + 0.25 * COUNT); requests left when it
      runs out print "ERR" without being tried. Exits 0 whatever the answers were.
  http_probe.py udp-serve PORT [LIFETIME]
      answer every UDP datagram on PORT with the sender's address (16 bytes, space-padded)
      followed by the datagram itself; prints "ready" once bound
  http_probe.py udp-get HOST PORT SIZE TIMEOUT
      sends one datagram of SIZE pseudo-random bytes (larger than the MTU: it leaves in
      fragments) and prints the address the server saw if the whole datagram came back intact,
      else "ERR"
"""
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def answer(conn, peer, name):
    try:
        conn.settimeout(2.0)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        body = (peer[0] if name == "client-ip" else name).encode() + b"\n"
        conn.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
    except OSError:
        pass
    finally:
        conn.close()


def serve(port, name, lifetime):
    deadline = time.monotonic() + lifetime
    with socket.create_server(("0.0.0.0", port), backlog=256) as srv:
        srv.settimeout(0.5)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                conn, peer = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                time.sleep(0.05)
                continue
            threading.Thread(target=answer, args=(conn, peer, name), daemon=True).start()


def get_once(host, port, path, timeout):
    """One GET on a new connection; returns the stripped body or None. Also returns the socket,
    which the caller keeps open so that its source port is not reused within the run."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(
            b"GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (path.encode(), host.encode())
        )
        response = b""
        while len(response) < 65536:
            left = deadline - time.monotonic()
            if left <= 0:
                return sock, None
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
        head, sep, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/1.") or status[1] != b"200":
            return sock, None
        text = body.decode("utf-8", "replace").strip()
        return sock, (text if text and "\n" not in text else None)
    except (OSError, ValueError):
        return sock, None


def get(url, count, timeout, total):
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        sys.exit(f"not an http URL: {url}")
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    deadline = time.monotonic() + total
    held = []
    try:
        for _ in range(count):
            left = deadline - time.monotonic()
            if left <= 0.05:
                print("ERR", flush=True)
                continue
            sock, text = get_once(host, port, path, min(timeout, left))
            held.append(sock)
            print(text if text is not None else "ERR", flush=True)
    finally:
        for sock in held:
            sock.close()


def udp_serve(port, lifetime):
    deadline = time.monotonic() + lifetime
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.settimeout(0.5)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(65535)
            except socket.timeout:
                continue
            sock.sendto(peer[0].encode().ljust(16) + data, peer)


def udp_get(host, port, size, timeout):
    payload = bytes((i * 7919 + 13) % 251 for i in range(size))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (host, port))
            data, _ = sock.recvfrom(65535)
        except OSError:
            print("ERR", flush=True)
            return
    seen, echoed = data[:16].decode("ascii", "replace").strip(), data[16:]
    print(seen if echoed == payload else "ERR", flush=True)


def main(argv):
    if len(argv) in (4, 5) and argv[1] == "serve":
        serve(int(argv[2]), argv[3], float(argv[4]) if len(argv) == 5 else 600.0)
    elif len(argv) in (5, 6) and argv[1] == "get":
        count, timeout = int(argv[3]), float(argv[4])
        total = float(argv[5]) if len(argv) == 6 else timeout + 0.25 * count
        get(argv[2], count, timeout, total)
    elif len(argv) in (3, 4) and argv[1] == "udp-serve":
        udp_serve(int(argv[2]), float(argv[3]) if len(argv) == 4 else 600.0)
    elif len(argv) == 6 and argv[1] == "udp-get":
        udp_get(argv[2], int(argv[3]), int(argv[4]), float(argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
