#!/usr/bin/env python3
"""Writes the seed corpus (corpus/admit/, corpus/ctl_decode/); rerun after a format change,
and after a FUZZ_MERGE=1 run of scripts/fuzz.sh (the merge renames files to hashes, and
crates/datapath/tests/fuzz_corpus.rs checks these seeds by name)."""
import ipaddress, os, struct

here = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def ip(s):
    return ipaddress.IPv4Address(s).packed


def packet(src, dst, options=0, payload=8, frag=0, proto=17):
    hl = 20 + options
    total = hl + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | hl // 4, 0, total, 1, frag, 64, proto, 0, ip(src), ip(dst))
    return h + b"\x01" * options + b"\x00" * payload


peer2 = ip("192.0.2.2")
write("admit", "ok", peer2 + packet("10.244.2.7", "10.244.1.9"))
write("admit", "ok_options", peer2 + packet("10.244.2.7", "10.244.100.9", options=40))
write("admit", "ok_fragment", ip("192.0.2.3") + packet("10.244.3.200", "10.244.1.1", frag=0x2000 | 185))
write("admit", "ok_nested", ip("198.51.100.7") + packet("7.1.2.3", "10.244.1.3"))
write("admit", "short", peer2 + packet("10.244.2.7", "10.244.1.9")[:19])
write("admit", "ipv6", peer2 + b"\x60" + b"\x00" * 39)
write("admit", "bad_ihl", peer2 + b"\x44" + packet("10.244.2.7", "10.244.1.9")[1:])
write("admit", "stranger", ip("203.0.113.5") + packet("10.244.2.7", "10.244.1.9"))
write("admit", "spoofed", peer2 + packet("10.244.3.7", "10.244.1.9"))
write("admit", "foreign", peer2 + packet("10.244.2.7", "10.244.3.9"))
write("admit", "no_blocks", ip("192.0.2.4") + packet("10.244.2.7", "10.244.1.9"))


def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def msg(kind, body=b""):
    return b"TWDP" + struct.pack("!HB", 1, kind) + body


def blocks(bs):
    out = varint(len(bs))
    for b in bs:
        n = ipaddress.IPv4Network(b, strict=False)
        out += n.network_address.packed + bytes([n.prefixlen])
    return out


def s(text):
    b = text.encode()
    return varint(len(b)) + b


def table(gen, local, peers):
    body = struct.pack("!Q", gen) + ip(local[0]) + blocks(local[1]) + varint(len(peers))
    for node, port, bs in peers:
        body += ip(node) + struct.pack("!H", port) + blocks(bs)
    return msg(0x02, body)


write("ctl_decode", "hello", msg(0x01, struct.pack("!H", 1)))
write("ctl_decode", "table", table(7, ("192.0.2.1", ["10.244.1.0/24"]),
                                   [("192.0.2.2", 8285, ["10.244.2.0/24", "10.244.2.128/25"]),
                                    ("192.0.2.3", 40000, []), ("192.0.2.4", 8285, ["0.0.0.0/0"])]))
write("ctl_decode", "table_overlap", table(8, ("192.0.2.1", ["10.244.0.0/16"]),
                                           [("192.0.2.2", 8285, ["10.244.2.0/24"])]))
write("ctl_decode", "stats", msg(0x03))
write("ctl_decode", "shutdown", msg(0x04, b"\x01"))
write("ctl_decode", "hello_ack", msg(0x81, struct.pack("!HIQ", 1, 4242, 9) + s("twl.tun") + struct.pack("!H", 2) + s("twill 0.1")))
write("ctl_decode", "table_ack", msg(0x82, struct.pack("!Q", 9)))
peer_stats = ip("192.0.2.2") + b"".join(varint(v) for v in [1, 1500, 300, 2**40, 0])
drops = varint(10) + b"".join(bytes([c]) + varint(c * 1000) for c in range(10))
write("ctl_decode", "stats_reply", msg(0x83, varint(1) + peer_stats + drops + varint(2**64 - 1)))
write("ctl_decode", "error", msg(0x84, s("table refused: block 10.244.2.0/24 of peer 192.0.2.2 overlaps")))
