#!/usr/bin/env python3
"""Raw Ethernet frames on an interface, for L2 tests.

  rawframe.py send IFACE DST_MAC SRC_MAC COUNT     send COUNT frames of EtherType 0x88b5
  rawframe.py listen IFACE SECONDS                 print "<count> <dst,...>" of 0x88b5 frames
                                                   seen within SECONDS (prints "ready" first)
  rawframe.py garp IFACE SRC_MAC IP COUNT          send COUNT gratuitous ARP requests claiming
                                                   IP for SRC_MAC (broadcast)
"""
import socket
import sys
import time

ETHERTYPE = 0x88B5  # IEEE local experimental: nothing else on the wire uses it


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def send(iface, dst, src, count):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        frame = mac(dst) + mac(src) + ETHERTYPE.to_bytes(2, "big") + b"vswitch-test".ljust(46, b".")
        for _ in range(count):
            s.send(frame)


def garp(iface, src, ip, count):
    addr = bytes(int(o) for o in ip.split("."))
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac(src) + addr + b"\x00" * 6 + addr)
    frame = b"\xff" * 6 + mac(src) + b"\x08\x06" + arp.ljust(46, b"\x00")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for _ in range(count):
            s.send(frame)


def listen(iface, seconds):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE)) as s:
        s.bind((iface, 0))
        s.settimeout(0.1)
        print("ready", flush=True)
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                frame, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            seen.append(":".join(f"{b:02x}" for b in frame[:6]))
        print(len(seen), ",".join(sorted(set(seen))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) == 6 and sys.argv[1] == "garp":
        garp(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) == 4 and sys.argv[1] == "listen":
        listen(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
