#!/usr/bin/python3
"""Extracts the BGP messages of every TCP connection on port 179 in a pcap file (Ethernet,
IPv4 or IPv6) into vector files, one per connection (format: README.md).

  pcap2vectors.py CAPTURE.pcap OUTDIR --label IP=NAME ... --session IP-IP=FILE ... --source TEXT

Each direction of a connection is reassembled by sequence number (retransmissions and
duplicates dropped), cut into messages by the BGP header's length, and every message is
checked: all-ones marker, 19..4096 bytes. The messages of both directions are written in
the order they completed on the wire. A connection whose address pair has no --session
name is an error (so nothing is captured by accident); a pair seen again (a reconnect) gets
FILE-2, FILE-3, ...
"""
import argparse, ipaddress, os, struct, sys

TYPES = {1: 'OPEN', 2: 'UPDATE', 3: 'NOTIFICATION', 4: 'KEEPALIVE', 5: 'ROUTE-REFRESH'}
FAMILIES = {(1, 1): 'ipv4-unicast', (2, 1): 'ipv6-unicast'}


def packets(path):
    with open(path, 'rb') as f:
        data = f.read()
    magic = struct.unpack('<I', data[:4])[0]
    end = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
    linktype = struct.unpack(end + 'I', data[20:24])[0]
    if linktype != 1:
        sys.exit(f'pcap link type {linktype}: only Ethernet (1) is read; capture with -i on a bridge or veth')
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(end + 'IIII', data[off:off + 16])
        yield data[off + 16:off + 16 + incl]
        off += 16 + incl


def tcp_segments(path):
    """(src, sport, dst, dport, seq, flags, payload) for each TCP segment."""
    for frame in packets(path):
        eth = struct.unpack('!H', frame[12:14])[0]
        p = frame[14:]
        if eth == 0x8100:
            eth, p = struct.unpack('!H', p[2:4])[0], p[4:]
        if eth == 0x0800:
            ihl = (p[0] & 15) * 4
            if p[9] != 6:
                continue
            total = struct.unpack('!H', p[2:4])[0]
            src, dst, seg = ipaddress.ip_address(p[12:16]), ipaddress.ip_address(p[16:20]), p[ihl:total]
        elif eth == 0x86dd:
            if p[6] != 6:  # no extension headers on these sessions
                continue
            plen = struct.unpack('!H', p[4:6])[0]
            src, dst, seg = ipaddress.ip_address(p[8:24]), ipaddress.ip_address(p[24:40]), p[40:40 + plen]
        else:
            continue
        sport, dport, seq = struct.unpack('!HHI', seg[:8])
        doff = (seg[12] >> 4) * 4
        yield str(src), sport, str(dst), dport, seq, seg[13], seg[doff:]


class Direction:
    def __init__(self):
        self.next = None      # next expected sequence number
        self.pending = {}     # out-of-order segments: seq -> bytes
        self.buf = b''

    def add(self, seq, flags, payload):
        if flags & 0x02:      # SYN: data starts at seq + 1
            self.next = (seq + 1) & 0xffffffff
            return
        if self.next is None or not payload:
            return
        self.pending[seq] = max(payload, self.pending.get(seq, b''), key=len)
        progress = True
        while progress:
            progress = False
            for s in list(self.pending):
                d = (self.next - s) & 0xffffffff
                seg = self.pending[s]
                if d < len(seg):                      # starts at or before next, extends it
                    self.buf += seg[d:]
                    self.next = (s + len(seg)) & 0xffffffff
                    del self.pending[s]
                    progress = True
                elif d < 0x80000000:                  # wholly old: a retransmission
                    del self.pending[s]

    def messages(self):
        while len(self.buf) >= 19:
            if self.buf[:16] != b'\xff' * 16:
                sys.exit('stream lost sync: no BGP marker (a segment missing from the capture?)')
            n = struct.unpack('!H', self.buf[16:18])[0]
            if not 19 <= n <= 4096:
                sys.exit(f'bad BGP length {n} on the wire')
            if len(self.buf) < n:
                return
            m, self.buf = self.buf[:n], self.buf[n:]
            yield m


def caps(open_msg):
    """{code: [value, ...]} of an OPEN's capabilities."""
    out, body = {}, open_msg[19:]
    plen, i = body[9], 10
    while i < 10 + plen:
        ptype, l = body[i], body[i + 1]
        v = body[i + 2:i + 2 + l]
        if ptype == 2:
            j = 0
            while j < len(v):
                out.setdefault(v[j], []).append(v[j + 2:j + 2 + v[j + 1]])
                j += 2 + v[j + 1]
        i += 2 + l
    return out


def families(c):
    fams = set()
    for v in c.get(1, []):
        afi_safi = struct.unpack('!HxB', v)
        fams.add(FAMILIES.get(afi_safi, 'afi%d-safi%d' % afi_safi))
    return fams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('pcap')
    ap.add_argument('outdir')
    ap.add_argument('--label', action='append', default=[], help='IP=NAME of a speaker')
    ap.add_argument('--session', action='append', default=[], help='IP-IP=FILE (either order)')
    ap.add_argument('--source', required=True, help='how the capture was made (a comment)')
    a = ap.parse_args()
    labels = dict(x.split('=', 1) for x in a.label)
    names = {}
    for x in a.session:
        pair, name = x.split('=', 1)
        l, r = pair.split('-', 1)
        names[frozenset((str(ipaddress.ip_address(l)), str(ipaddress.ip_address(r))))] = name

    conns = {}   # 4-tuple (sorted) -> dict(dirs, msgs)
    order = []
    for src, sport, dst, dport, seq, flags, payload in tcp_segments(a.pcap):
        if 179 not in (sport, dport):
            continue
        key = tuple(sorted([(src, sport), (dst, dport)]))
        if flags & 0x02 and not flags & 0x10 and key in conns and conns[key]['msgs']:
            key = key + (len(order),)      # the same 4-tuple reused: a new connection
        c = conns.get(key)
        if c is None:
            c = conns[key] = {'dirs': {}, 'msgs': [], 'pair': frozenset((src, dst))}
            order.append(key)
        d = c['dirs'].setdefault((src, sport), Direction())
        d.add(seq, flags, payload)
        for m in d.messages():
            c['msgs'].append((src, m))

    seen = {}
    os.makedirs(a.outdir, exist_ok=True)
    for key in order:
        c = conns[key]
        if not c['msgs']:
            continue
        base = names.get(c['pair'])
        if base is None:
            sys.exit(f'a BGP connection between {sorted(c["pair"])} has no --session name')
        seen[base] = seen.get(base, 0) + 1
        fname = base if seen[base] == 1 else f'{base}-{seen[base]}'
        opens = {src: m for src, m in c['msgs'] if m[18] == 1}
        if len(opens) != 2:
            sys.exit(f'{fname}: expected an OPEN from each side, saw {len(opens)}')
        cs = [caps(m) for m in opens.values()]
        four = all(65 in x for x in cs)
        fams = families(cs[0]) & families(cs[1]) if all(1 in x for x in cs) else {'ipv4-unicast'}
        who = ' <-> '.join(f'{labels.get(ip, "?")} {ip}' for ip in opens)
        with open(os.path.join(a.outdir, fname + '.txt'), 'w') as f:
            f.write(f'# {fname}: every BGP message of one real TCP session, {who}.\n')
            f.write(f'# {a.source}\n')
            f.write('# Format: crates/bgp/tests/vectors/README.md. Regenerate with capture.sh.\n')
            f.write(f'#! four-octet-as: {"yes" if four else "no"}\n')
            f.write(f'#! families: {" ".join(sorted(fams))}\n')
            for src, m in c['msgs']:
                t = TYPES.get(m[18], f'type {m[18]}')
                extra = ''
                if m[18] == 2 and m[19:23] == b'\0\0\0\0' and len(m) == 23:
                    extra = ' (End-of-RIB, IPv4 unicast)'
                elif m[18] == 5:
                    extra = ' (subtype %d: %s)' % (m[21], {0: 'request', 1: 'BoRR', 2: 'EoRR'}.get(m[21], '?'))
                f.write(f'{m.hex()}  # from {labels.get(src, src)} {src}: {t}{extra}\n')
        print(f'{fname}.txt: {len(c["msgs"])} messages, four-octet-as {four}, {" ".join(sorted(fams))}')


if __name__ == '__main__':
    main()
