#!/usr/bin/python3
"""Writes the fuzz targets' seed inputs into corpus/<target>/ (README.md, "The corpus").

  crates/bgp/fuzz/seeds.py        # then: FUZZ_MERGE=1 scripts/fuzz.sh  (minimises)

Sources, so the fuzzer starts from what real peers and the tests send:
- every message of the captured BIRD/FRR sessions in ../tests/vectors/*.txt, with the
  session's negotiated context (four-octet AS, families) for the round-trip target;
- every malformed message of the scripted bad peer (../tests/peer/bgp_peer.py, CASES), and
  its OPEN;
- EXTRA below: byte cases neither has (AS4_AGGREGATOR, unknown capability and attributes,
  IPv4 in MP_REACH, OPEN and NOTIFICATION variants).
File names are the SHA-1 of the contents, as libFuzzer names them, so rerunning adds
nothing twice. Each target's input format: the module doc of src/lib.rs.
"""
import hashlib, os, pathlib, struct, sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'tests' / 'peer'))
import bgp_peer as p  # noqa: E402  (the bad peer's builders and CASES)

TARGET_OF_TYPE = {1: 'open', 2: 'update', 3: 'notification', 5: 'route_refresh'}
FRAME_MAX = 12288  # scripts/fuzz.sh: -max_len for frame


def put(target, data):
    d = HERE / 'corpus' / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def seed_message(m, selector):
    """One whole message: its body for its type's target, and the round-trip input."""
    t = m[18] if len(m) > 18 else None
    if t in TARGET_OF_TYPE and m[:16] == p.M and len(m) <= 4096:
        put(TARGET_OF_TYPE[t], m[19:])
        put('roundtrip', bytes([selector, t - 1]) + m[19:])
        if t == 2:  # the packing encoders: as sent, and with 1,040 more prefixes to split
            put('pack', bytes([selector, 0]) + m[19:])
            put('pack', bytes([selector, 130]) + m[19:])
    put('frame', m)


def vectors():
    for f in sorted((HERE.parent / 'tests' / 'vectors').glob('*.txt')):
        ctx, msgs = {}, []
        for line in f.read_text().splitlines():
            if line.startswith('#!'):
                k, v = line[2:].split(':', 1)
                ctx[k.strip()] = v.strip()
            elif line.strip() and not line.startswith('#'):
                msgs.append(bytes.fromhex(line.split('#', 1)[0].strip()))
        selector = (ctx.get('four-octet-as') == 'yes') | (('ipv6-unicast' in ctx.get('families', '')) << 1)
        for m in msgs:
            seed_message(m, selector)
        stream = b''
        for m in msgs:  # the session as one receive buffer, cut to the frame target's max_len
            if len(stream) + len(m) > FRAME_MAX:
                break
            stream += m
        put('frame', stream)


def bad_peer():
    asn, nh, prefix = 65001, '192.0.2.1', '203.0.113.0/24'
    seed_message(p.open_msg(asn, '192.0.2.1'), 0b01)
    seed_message(p.open_msg(4200000001, '192.0.2.1'), 0b01)
    for build, _outcome, _rfc in p.CASES.values():
        seed_message(build(asn, nh, prefix), 0b01)


def extra():
    u, a = p.update, p.attr
    as2_path = a(0x40, 2, bytes([2, 1]) + struct.pack('!H', 23456))
    nh = p.next_hop('192.0.2.1')
    # Two-octet session: AS_TRANS in AS_PATH and AGGREGATOR, the real ASes in AS4_PATH (17) and
    # AS4_AGGREGATOR (18), RFC 6793 §4.2.
    seed_message(u(p.origin() + as2_path + nh + a(0xC0, 7, struct.pack('!H', 23456) + bytes([192, 0, 2, 9]))
                   + a(0xC0, 17, bytes([2, 1]) + struct.pack('!I', 4200000001))
                   + a(0xC0, 18, struct.pack('!I', 4200000001) + bytes([192, 0, 2, 9])), ['203.0.113.0/24']), 0b00)
    std = p.std_attrs(65001, '192.0.2.1')
    # Unknown optional non-transitive (dropped), unknown with the extended-length bit, LOCAL_PREF, MED,
    # ATOMIC_AGGREGATE, LARGE_COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST (iBGP-only attributes on any session).
    seed_message(u(std + a(0x80, 241, b'\x01\x02') + a(0xD0, 242, b'x' * 3) + a(0x40, 5, struct.pack('!I', 100))
                   + a(0x80, 4, struct.pack('!I', 7)) + a(0x40, 6, b'') + a(0xC0, 32, struct.pack('!III', 1, 2, 3))
                   + a(0x80, 9, bytes([192, 0, 2, 7])) + a(0x80, 10, bytes([192, 0, 2, 8, 192, 0, 2, 9])),
                   ['203.0.113.0/24', '198.51.100.128/25']), 0b01)
    # IPv4 unicast in MP_REACH / MP_UNREACH (RFC 4760), and the IPv6 End-of-RIB.
    seed_message(u(p.origin() + p.as_path(65001) + a(0x90, 14, struct.pack('!HBB', 1, 1, 4) + bytes([192, 0, 2, 1, 0])
                   + p.pfx('203.0.113.0/24'))), 0b11)
    seed_message(u(a(0x90, 15, struct.pack('!HB', 1, 1) + p.pfx('203.0.113.0/24'))), 0b11)
    seed_message(u(a(0x90, 15, struct.pack('!HB', 2, 1))), 0b11)
    seed_message(u(withdrawn=['203.0.113.0/24', '0.0.0.0/0', '198.51.100.1/32']), 0b01)
    # OPEN: graceful restart with two families, an unknown capability, an old-style non-capability
    # optional parameter, version 3, hold time 1.
    caps = (bytes([1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 64, 8, 0x80, 120, 0, 1, 1, 0x80, 0, 2, 1, 0]) + bytes([200, 2, 9, 9])
            + bytes([65, 4]) + struct.pack('!I', 4200000001))
    body = struct.pack('!BHH4s', 4, 23456, 90, bytes([192, 0, 2, 1]))
    seed_message(p.msg(p.OPEN, body + bytes([len(caps) + 2, 2, len(caps)]) + caps), 0b01)
    seed_message(p.msg(p.OPEN, body + bytes([3, 9, 1, 0])), 0b00)
    seed_message(p.msg(p.OPEN, struct.pack('!BHH4sB', 3, 65001, 1, bytes([192, 0, 2, 1]), 0)), 0b00)
    # NOTIFICATION: Cease with a shutdown communication (RFC 8203), UPDATE error 3/1; ROUTE-REFRESH
    # for IPv6 and for an unknown family with the RFC 7313 BoRR subtype.
    seed_message(p.msg(p.NOTIFICATION, bytes([6, 2, 5]) + b'bye!!'), 0b00)
    seed_message(p.msg(p.NOTIFICATION, bytes([3, 1])), 0b00)
    seed_message(p.msg(p.ROUTE_REFRESH, struct.pack('!HBB', 2, 0, 1)), 0b10)
    seed_message(p.msg(p.ROUTE_REFRESH, struct.pack('!HBB', 25, 1, 70)), 0b00)


if __name__ == '__main__':
    vectors()
    bad_peer()
    extra()
    for t in sorted(os.listdir(HERE / 'corpus')):
        print(t, len(os.listdir(HERE / 'corpus' / t)))
