#!/usr/bin/python3
"""A scripted BGP peer on a raw TCP socket (after ../shared/RUNBOOK.md §3): it opens a session
to a speaker, then sends what it is told, valid or deliberately malformed, and reports what
comes back. The interop tests drive it; nothing here judges the speaker.

  bgp_peer.py --host ADDR --asn AS --router-id ID [--hold 9] [--port 179] [--local ADDR]
  bgp_peer.py --list          # the malformed cases and their RFC outcomes, as JSON

After the session is Established it prints {"established": {...the speaker's OPEN...}}
and reads commands from stdin, one per line, answering each with one JSON line:
  announce PREFIX [COMMUNITY...]   a valid UPDATE (ORIGIN IGP, AS_PATH [asn], NEXT_HOP the
                                   local address; communities as A:B)
  withdraw PREFIX
  case NAME PREFIX                 the malformed message NAME (see CASES), about PREFIX
  wait SECS                        collect what the speaker sends for SECS (returns early
                                   when it closes): {"received": [...], "closed": bool}
  silence                          stop sending KEEPALIVEs (the speaker's hold timer runs out)
  quit
A keepalive thread keeps the session up between commands (every hold/3 s).
"""
import argparse, json, socket, struct, sys, threading, time

M, OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE_REFRESH = b'\xff' * 16, 1, 2, 3, 4, 5


def msg(t, body=b'', length=None, marker=M):    # length=: forge the header length
    return marker + struct.pack('!HB', 19 + len(body) if length is None else length, t) + body


def open_msg(asn, rid, hold=9):                 # caps: MP IPv4 unicast, route refresh, 4-octet AS
    caps = bytes([1, 4, 0, 1, 0, 1, 2, 0, 65, 4]) + struct.pack('!I', asn)
    return msg(OPEN, struct.pack('!BHH4sBBB', 4, asn if asn < 65536 else 23456, hold,
                                 socket.inet_aton(rid), len(caps) + 2, 2, len(caps)) + caps)


def attr(flags, code, val, length=None):        # length=: forge the attribute length
    n = len(val) if length is None else length
    return struct.pack('!BBH' if flags & 0x10 else '!BBB', flags, code, n) + val


def origin(v=0, flags=0x40, length=None):
    return attr(flags, 1, bytes([v]), length)


def as_path(asn, count=None):                   # one AS_SEQUENCE; count=: forge the segment length
    return attr(0x40, 2, bytes([2, 1 if count is None else count]) + struct.pack('!I', asn))


def next_hop(nh, extra=b''):
    return attr(0x40, 3, socket.inet_aton(nh) + extra)


def communities(cs):
    return attr(0xC0, 8, b''.join(struct.pack('!HH', *map(int, c.split(':'))) for c in cs)) if cs else b''


def std_attrs(asn, nh, cs=()):                  # ORIGIN IGP, AS_PATH [asn], NEXT_HOP nh
    return origin() + as_path(asn) + next_hop(nh) + communities(cs)


def pfx(p):
    a, l = p.split('/'); l = int(l); return bytes([l]) + socket.inet_aton(a)[:(l + 7) // 8]


def update(attrs=b'', nlri=(), withdrawn=(), tpal=None, raw_nlri=b'', wrl=None):
    w = b''.join(map(pfx, withdrawn))           # tpal=, wrl=: forge those lengths
    return msg(UPDATE, struct.pack('!H', len(w) if wrl is None else wrl) + w
               + struct.pack('!H', len(attrs) if tpal is None else tpal)
               + attrs + b''.join(map(pfx, nlri)) + raw_nlri)


# Each case: (builder(asn, nh, prefix) -> bytes, RFC outcome, where the RFC says so).
# Outcomes: "withdraw" (treat-as-withdraw: the prefix goes, the session stays), "discard"
# (attribute discard: the prefix stays), "keep" (nothing wrong: the prefix stays, the
# attribute is passed on), "ignore" (the message is ignored, the session stays) or
# [code, subcode] (a NOTIFICATION, then the session closes).
CASES = {
    'origin-flags': (lambda a, nh, p: update(origin(flags=0xC0) + as_path(a) + next_hop(nh), [p]),
                     'withdraw', 'RFC 7606 §3.c (conflicting flags), §7.1'),
    'origin-length': (lambda a, nh, p: update(attr(0x40, 1, b'\0\0') + as_path(a) + next_hop(nh), [p]),
                      'withdraw', 'RFC 7606 §7.1 (ORIGIN length not 1)'),
    'origin-value': (lambda a, nh, p: update(origin(5) + as_path(a) + next_hop(nh), [p]),
                     'withdraw', 'RFC 7606 §7.1 (undefined ORIGIN value)'),
    'next-hop-missing': (lambda a, nh, p: update(origin() + as_path(a), [p]),
                         'withdraw', 'RFC 7606 §3.d (missing well-known mandatory attribute)'),
    'next-hop-length': (lambda a, nh, p: update(origin() + as_path(a) + next_hop(nh, b'\0'), [p]),
                        'withdraw', 'RFC 7606 §7.3 (NEXT_HOP length not 4)'),
    'as-path-segment-overrun': (lambda a, nh, p: update(origin() + as_path(a, count=2) + next_hop(nh), [p]),
                                'withdraw', 'RFC 7606 §7.2 (AS_PATH segment overrun)'),
    'attr-length-overrun': (lambda a, nh, p: update(origin() + as_path(a) + attr(0x40, 3, socket.inet_aton(nh), 9), [p]),
                            'withdraw', 'RFC 7606 §4 (attribute length overruns the attribute block)'),
    'duplicate-attr': (lambda a, nh, p: update(origin() + std_attrs(a, nh), [p]),
                       'discard', 'RFC 7606 §3.g (all but the first occurrence discarded)'),
    'unknown-optional-transitive': (lambda a, nh, p: update(std_attrs(a, nh) + attr(0xC0, 240, b'hi'), [p]),
                                    'keep', 'RFC 4271 §5 / §9 (passed on, Partial bit set)'),
    'unknown-well-known': (lambda a, nh, p: update(std_attrs(a, nh) + attr(0x40, 99, b'\1'), [p]),
                           [3, 2], 'RFC 4271 §6.3 (Unrecognized Well-known Attribute); RFC 7606 §3.c is about '
                           'attributes whose flags are specified, so it does not revise this (BIRD withdraws instead)'),
    'total-attr-length-too-big': (lambda a, nh, p: update(std_attrs(a, nh), [p], tpal=200),
                                  [3, 1], 'RFC 7606 §4 / RFC 4271 §6.3 (Malformed Attribute List)'),
    'withdrawn-length-too-big': (lambda a, nh, p: update(std_attrs(a, nh), [p], wrl=200),
                                 [3, 1], 'RFC 4271 §6.3 (Withdrawn Routes Length too large: Malformed Attribute List)'),
    'nlri-prefix-length-33': (lambda a, nh, p: update(std_attrs(a, nh), raw_nlri=bytes([33, 10, 244, 30, 0, 0])),
                              [3, 10], 'RFC 7606 §5.3, RFC 4271 §6.3 (Invalid Network Field)'),
    'nlri-overrun': (lambda a, nh, p: update(std_attrs(a, nh), [p], raw_nlri=bytes([24, 10, 244])),
                     [3, 10], 'RFC 7606 §5.3 (NLRI overrun: session reset, Invalid Network Field)'),
    'mp-reach-unknown-afi': (lambda a, nh, p: update(
        origin() + as_path(a) + attr(0x80, 14, struct.pack('!HBB', 99, 1, 4) + socket.inet_aton(nh) + b'\0' + pfx(p))),
        'ignore', 'RFC 4760 §7 (an AFI/SAFI not negotiated: ignored; the session stays)'),
    'update-too-short': (lambda a, nh, p: msg(UPDATE, b'\0\0'),
                         [1, 2], 'RFC 4271 §6.1 (Bad Message Length: under 23 for an UPDATE)'),
    'oversize': (lambda a, nh, p: update(std_attrs(a, nh), [p], raw_nlri=bytes([24, 10, 244, 31]) * 1020),
                 [1, 2], 'RFC 4271 §6.1 (Bad Message Length: over 4096 without RFC 8654)'),
    'bad-marker': (lambda a, nh, p: msg(KEEPALIVE, marker=b'\xff' * 15 + b'\0'),
                   [1, 1], 'RFC 4271 §6.1 (Connection Not Synchronized)'),
    'bad-type': (lambda a, nh, p: msg(9),
                 [1, 3], 'RFC 4271 §6.1 (Bad Message Type)'),
    'header-length-18': (lambda a, nh, p: msg(KEEPALIVE, length=18),
                         [1, 2], 'RFC 4271 §6.1 (Bad Message Length)'),
}


class Peer:
    def __init__(self, host, asn, rid, hold=9, port=179, local=None):
        self.asn = asn
        self.silent = False
        self.s = socket.create_connection((host, port), 5, (local, 0) if local else None)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local = self.s.getsockname()[0]
        self.lock = threading.Lock()
        self.send(open_msg(asn, rid, hold))
        t, o = self.recv(); assert t == OPEN, (t, o)
        self.their_open = o
        self.send(msg(KEEPALIVE))
        while True:                                                # now Established
            t, b = self.recv()
            if t == KEEPALIVE:
                break
            assert t != NOTIFICATION, ('NOTIFICATION', b.hex())
        every = max(1, min(hold, struct.unpack('!H', o[3:5])[0]) // 3)
        threading.Thread(target=self._ka, args=(every,), daemon=True).start()

    def _ka(self, every):
        while time.sleep(every) is None:
            if self.silent:
                return
            try: self.send(msg(KEEPALIVE))
            except OSError: return

    def send(self, b):
        with self.lock: self.s.sendall(b)

    def _n(self, n):
        b = b''
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c: raise EOFError('peer closed')
            b += c
        return b

    def recv(self):                                 # -> (type, body)
        h = self._n(19)
        l, t = struct.unpack('!HB', h[16:])
        return t, self._n(l - 19)

    def wait(self, secs):
        out, closed, end = [], False, time.time() + secs
        while (left := end - time.time()) > 0:
            self.s.settimeout(left)
            try:
                t, b = self.recv()
            except socket.timeout:
                break
            except (EOFError, ConnectionResetError, OSError):
                closed = True; break
            m = {'type': t}
            if t == NOTIFICATION:
                m.update(code=b[0], subcode=b[1], data=b[2:].hex())
            elif t == UPDATE:
                m['hex'] = b.hex()
                m['end_of_rib'] = b == b'\0\0\0\0'
            if t != KEEPALIVE:
                out.append(m)
        return {'received': out, 'closed': closed}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--host'); ap.add_argument('--asn', type=int); ap.add_argument('--router-id')
    ap.add_argument('--hold', type=int, default=9); ap.add_argument('--port', type=int, default=179)
    ap.add_argument('--local'); ap.add_argument('--list', action='store_true')
    a = ap.parse_args()
    out = lambda o: (sys.stdout.write(json.dumps(o) + '\n'), sys.stdout.flush())
    if a.list:
        out({n: {'outcome': c[1], 'rfc': c[2]} for n, c in CASES.items()})
        return
    if not (a.host and a.asn and a.router_id):
        ap.error('--host, --asn and --router-id are needed (or --list)')
    try:
        p = Peer(a.host, a.asn, a.router_id, a.hold, a.port, a.local)
    except Exception as e:                                  # the test reads why
        out({'error': f'no session with {a.host}: {e!r}'}); sys.exit(1)
    o = p.their_open
    out({'established': {'asn': struct.unpack('!H', o[1:3])[0], 'hold': struct.unpack('!H', o[3:5])[0],
                         'router_id': socket.inet_ntoa(o[5:9]), 'open': o.hex(), 'local': p.local}})
    for line in sys.stdin:
        w = line.split()
        if not w:
            continue
        try:
            if w[0] == 'announce':
                b = update(std_attrs(p.asn, p.local, w[2:]), [w[1]]); p.send(b); out({'sent': b.hex()})
            elif w[0] == 'withdraw':
                b = update(withdrawn=[w[1]]); p.send(b); out({'sent': b.hex()})
            elif w[0] == 'case':
                c = CASES[w[1]]; b = c[0](p.asn, p.local, w[2]); p.send(b)
                out({'sent': b.hex(), 'outcome': c[1], 'rfc': c[2]})
            elif w[0] == 'wait':
                out(p.wait(float(w[1])))
            elif w[0] == 'silence':
                p.silent = True; out({'silent': True})
            elif w[0] == 'quit':
                return
            else:
                out({'error': f'unknown command {w[0]!r}'})
        except (OSError, EOFError, KeyError) as e:
            out({'error': repr(e)})


if __name__ == '__main__':
    main()
