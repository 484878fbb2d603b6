# Two TUNs (one per netns) with IFF_VNET_HDR + offloads; frames are relayed as read (vnet header kept).
import ctypes, os, fcntl, struct, select, sys, collections, time
libc = ctypes.CDLL('libc.so.6', use_errno=True)
TUNSETIFF=0x400454ca; TUNSETOFFLOAD=0x400454d0
def opentun_in(ns, name, off):
    nsfd = os.open('/run/netns/' + ns, os.O_RDONLY)
    assert libc.setns(nsfd, 0x40000000) == 0
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH22x', name.encode(), 1|0x1000|0x4000))
    fcntl.ioctl(fd, TUNSETOFFLOAD, off); os.close(nsfd); return fd
off = int(sys.argv[1], 0)
a = opentun_in('twlr11-a', 'twlr11ta', off); b = opentun_in('twlr11-b', 'twlr11tb', off)
open('/tmp/twl-research/relay.ready', 'w').close()
hist = collections.Counter(); n = 0; big = 0; mx = 0; t_end = time.time() + float(sys.argv[2]); open("/tmp/twl-research/relay.ready","w").close()
other = {a: b, b: a}
while time.time() < t_end:
    r, _, _ = select.select([a, b], [], [], 0.2)
    for fd in r:
        try: f = os.read(fd, 65536 + 10)
        except BlockingIOError: continue
        flags, gt, hl, gs, cs, co = struct.unpack('<BBHHHH', f[:10])
        n += 1; hist[(flags, gt, gs if gt else 0)] += 1; mx = max(mx, len(f) - 10)
        os.write(other[fd], f)
print('frames %d, largest IP packet %d B' % (n, mx))
for k, v in hist.most_common(6): print('  flags=%d gso_type=%d gso_size=%d: %d' % (k + (v,)))
