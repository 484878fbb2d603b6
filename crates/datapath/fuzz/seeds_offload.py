#!/usr/bin/env python3
"""Writes the seed corpus of dp-offload's targets (corpus/split/, corpus/coalesce/): TUN frames
as a TSO/USO TUN hands them out (virtio-net header, partial checksum), and datagrams of
segments as a peer's gso::split sends them. Rerun after a format change."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s  # folded, not complemented


SRC, DST = bytes([10, 244, 1, 5]), bytes([10, 244, 2, 6])


def packet(proto, payload, seq=1000, ident=7, flags=0x10, opts=b"", partial=False):
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 42, (20 + len(opts)) // 4 << 4, flags, 502, 0, 0) + opts
        at = 16
    else:
        l4 = struct.pack("!HHHH", 5353, 4789, 8 + len(payload), 0)
        at = 6
    l4 += payload
    total = 20 + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 63, proto, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", 0xFFFF ^ csum(ip)) + ip[12:]
    pseudo = SRC + DST + struct.pack("!BBH", 0, proto, len(l4))
    c = csum(pseudo) if partial else 0xFFFF ^ csum(pseudo + l4)
    if not partial and c == 0 and proto == 17:
        c = 0xFFFF
    l4 = l4[:at] + struct.pack("!H", c) + l4[at + 2:]
    return ip + l4


def vnet(flags, gso_type, hdr_len, gso_size, start, off):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, start, off)


ts = bytes([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
data = bytes((i * 31 + 7) & 0xFF for i in range(6000))
# split: a TCP super-packet (untrustworthy hdr_len), a UDP one, a partial ACK, a plain packet.
write("split", "tcp_gso", vnet(1, 1, 1500, 1000, 20, 16) + packet(6, data[:4500], opts=ts, flags=0x18, partial=True))
write("split", "tcp_gso_small", vnet(1, 1, 52, 100, 20, 16) + packet(6, data[:350], opts=ts, partial=True))
write("split", "udp_gso", vnet(1, 5, 28, 1200, 20, 6) + packet(17, data[:3000], partial=True))
write("split", "none_csum", vnet(1, 0, 0, 0, 20, 16) + packet(6, b"", opts=ts, partial=True))
write("split", "none", vnet(0, 0, 0, 0, 0, 0) + packet(17, data[:30]))
# coalesce: flags (1 = udp, 2 = fix), gso_size, then segments back to back.
def run(proto, n, size, last, flags, opts=b""):
    hl = 20 + (20 + len(opts) if proto == 6 else 8)
    segs = b"".join(
        packet(proto, data[i * size:(i + 1) * size if i < n - 1 else i * size + last], seq=1000 + i * size, ident=7 + i, opts=opts)
        for i in range(n))
    return bytes([flags]) + struct.pack("<H", hl + size) + segs


write("coalesce", "tcp_run", run(6, 4, 1000, 300, 0, ts))
write("coalesce", "tcp_run_fix", run(6, 3, 500, 500, 2))
write("coalesce", "udp_run", run(17, 3, 1000, 10, 1))
write("coalesce", "one", bytes([0, 0, 0]) + packet(6, data[:100]))
