#!/usr/bin/env python3
"""Raw Ethernet frames on an interface, for L2 tests.

  rawframe.py send IFACE DST_MAC SRC_MAC COUNT     send COUNT frames of EtherType 0x88b5
  rawframe.py listen IFACE SECONDS                 print "<count> <dst,...>" of 0x88b5 frames
                                                   seen within SECONDS (prints "ready" first)
  rawframe.py garp IFACE SRC_MAC IP COUNT          send COUNT gratuitous ARP requests claiming
                                                   IP for SRC_MAC (broadcast)
  rawframe.py udp IFACE DST_MAC SRC_MAC SRC_IP DST_IP PORT MODE COUNT
                                                   send COUNT IPv4/UDP datagrams whose checksum is
                                                   complete (MODE good), left to offload (partial:
                                                   the pseudo-header sum only) or wrong; the
                                                   payload names the mode
  rawframe.py sweep IFACE DST_MAC SRC_MAC SRC_IP FIRST_DST_IP COUNT
                                                   send one UDP datagram to each of COUNT
                                                   consecutive addresses, back to back
  rawframe.py stream IFACE DST_MAC SRC_MAC SECONDS  send a 0x88b5 frame every 100 us for SECONDS
  rawframe.py first IFACE SRC_MAC SECONDS         print "ready", then the CLOCK_MONOTONIC time
                                                   (ns) the first 0x88b5 frame from SRC_MAC
                                                   arrived ("none" if none within SECONDS)
  rawframe.py ra IFACE SRC_MAC COUNT               send COUNT IPv6 router advertisements from
                                                   SRC_MAC's link-local address to all nodes,
                                                   offering prefix 2001:db8:1::/64 and a
                                                   default route
  rawframe.py udp-count PORT SECONDS [ttl]         count datagrams received on PORT by payload
                                                   ("ready" first, then "<mode>=<n> ...", and with
                                                   ttl " ttls=<the TTLs they came with>")
"""
import socket
import sys
import time

ETHERTYPE = 0x88B5  # IEEE local experimental: nothing else on the wire uses it
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's value; older Pythons lack the name


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def send(iface, dst, src, count):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        frame = mac(dst) + mac(src) + ETHERTYPE.to_bytes(2, "big") + b"vswitch-test".ljust(46, b".")
        for _ in range(count):
            s.send(frame)


def stream(iface, dst, src, seconds):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        frame = mac(dst) + mac(src) + ETHERTYPE.to_bytes(2, "big") + b"vswitch-stream".ljust(46, b".")
        end = time.monotonic() + seconds
        due = time.monotonic()
        while due < end:
            s.send(frame)
            due += 0.0001
            while time.monotonic() < due:
                pass


def first(iface, src, seconds):
    want = mac(src)
    for frame in received(iface, seconds, 0.01):
        if frame[6:12] == want:
            print(time.monotonic_ns(), flush=True)
            return
    print("none", flush=True)


def garp(iface, src, ip, count):
    addr = bytes(int(o) for o in ip.split("."))
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac(src) + addr + b"\x00" * 6 + addr)
    frame = b"\xff" * 6 + mac(src) + b"\x08\x06" + arp.ljust(46, b"\x00")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for _ in range(count):
            s.send(frame)


def fold(acc):
    while acc > 0xFFFF:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def ones_sum(data):
    if len(data) % 2:
        data += b"\0"
    return sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def ip(text):
    return bytes(int(b) for b in text.split("."))


def udp_frame(dst, src, src_ip, dst_ip, port, mode):
    payload = mode.encode().ljust(32, b".")
    length = 8 + len(payload)
    header = bytearray(
        [0x45, 0, 0, 20 + length, 0, 0, 0x40, 0, 64, 17, 0, 0] + list(ip(src_ip)) + list(ip(dst_ip))
    )
    header[10:12] = (~fold(ones_sum(bytes(header))) & 0xFFFF).to_bytes(2, "big")
    segment = bytearray(int(port).to_bytes(2, "big") * 2 + length.to_bytes(2, "big") + b"\0\0" + payload)
    pseudo = ones_sum(ip(src_ip) + ip(dst_ip)) + 17 + length
    if mode == "partial":
        check = fold(pseudo)
    else:
        check = ~fold(pseudo + ones_sum(bytes(segment))) & 0xFFFF or 0xFFFF
        if mode == "wrong":
            check ^= 0x0101
    segment[6:8] = check.to_bytes(2, "big")
    return mac(dst) + mac(src) + b"\x08\x00" + bytes(header) + bytes(segment)


def udp(iface, dst, src, src_ip, dst_ip, port, mode, count):
    frame = udp_frame(dst, src, src_ip, dst_ip, port, mode)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for _ in range(count):
            s.send(frame)
            time.sleep(0.001)


def sweep(iface, dst, src, src_ip, first_dst_ip, count):
    first = int.from_bytes(ip(first_dst_ip), "big")
    frames = [
        udp_frame(dst, src, src_ip, ".".join(str(b) for b in (first + i).to_bytes(4, "big")), 9, "good")
        for i in range(count)
    ]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for frame in frames:
            s.send(frame)


def link_local(src):
    m = bytearray(mac(src))
    m[0] ^= 2
    return b"\xfe\x80" + b"\0" * 6 + bytes(m[:3]) + b"\xff\xfe" + bytes(m[3:])


def ra(iface, src, count):
    source, all_nodes = link_local(src), bytes.fromhex("ff02" + "00" * 13 + "01")
    # Hop limit 64, no flags, router lifetime 1800 s; our MAC; prefix 2001:db8:1::/64 for
    # addresses (on-link and autonomous, valid a day).
    body = bytearray([134, 0, 0, 0, 64, 0]) + (1800).to_bytes(2, "big") + b"\0" * 8
    body += bytes([1, 1]) + mac(src)
    body += bytes([3, 4, 64, 0xC0]) + (86400).to_bytes(4, "big") * 2 + b"\0" * 4
    body += bytes.fromhex("20010db8000100000000000000000000")
    pseudo = ones_sum(source + all_nodes) + len(body) + 58
    body[2:4] = (~fold(pseudo + ones_sum(bytes(body))) & 0xFFFF).to_bytes(2, "big")
    header = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([58, 255])
    frame = b"\x33\x33\0\0\0\x01" + mac(src) + b"\x86\xdd" + header + source + all_nodes + body
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for _ in range(count):
            s.send(frame)
            time.sleep(0.01)


def udp_count(port, seconds, with_ttl=False):
    counts, ttls = {}, set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.settimeout(0.1)
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data, ancillary, _, _ = s.recvmsg(2048, socket.CMSG_SPACE(4))
            except socket.timeout:
                continue
            mode = data.split(b".")[0].decode("ascii", "replace")
            counts[mode] = counts.get(mode, 0) + 1
            ttls.update(int.from_bytes(d[:4], sys.byteorder) for _, t, d in ancillary if t == socket.IP_TTL)
    out = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    if with_ttl:
        out += " ttls=" + ",".join(str(t) for t in sorted(ttls))
    print(out, flush=True)


def received(iface, seconds, poll):
    """The 0x88b5 frames arriving on IFACE for SECONDS (not our own), after printing "ready"."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE)) as s:
        s.bind((iface, 0))
        s.settimeout(poll)
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                frame, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                yield frame


def listen(iface, seconds):
    seen = [":".join(f"{b:02x}" for b in frame[:6]) for frame in received(iface, seconds, 0.1)]
    print(len(seen), ",".join(sorted(set(seen))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) == 4 and sys.argv[1] == "listen":
        listen(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) == 6 and sys.argv[1] == "garp":
        garp(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) == 10 and sys.argv[1] == "udp":
        udp(*sys.argv[2:9], int(sys.argv[9]))
    elif len(sys.argv) == 8 and sys.argv[1] == "sweep":
        sweep(*sys.argv[2:7], int(sys.argv[7]))
    elif len(sys.argv) == 6 and sys.argv[1] == "stream":
        stream(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif len(sys.argv) == 5 and sys.argv[1] == "first":
        first(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif len(sys.argv) == 5 and sys.argv[1] == "ra":
        ra(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "udp-count":
        udp_count(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:] == ["ttl"])
    else:
        sys.exit(__doc__)
