import fcntl, os, struct, socket, time, array
TUNSETIFF=0x400454ca; TUNSETPERSIST=0x400454cb; TUNSETOFFLOAD=0x400454d0
F = 1|0x1000|0x4000|0x100
def ifreq(name, flags): return struct.pack('16sH22x', name.encode(), flags)
fd = os.open('/dev/net/tun', os.O_RDWR); fcntl.ioctl(fd, TUNSETIFF, ifreq('twlr11p', F)); fcntl.ioctl(fd, TUNSETPERSIST, 1); os.close(fd)
o, i, off, c = [], [], [], []
for k in range(300):
    t0 = time.perf_counter(); fd = os.open('/dev/net/tun', os.O_RDWR); t1 = time.perf_counter()
    fcntl.ioctl(fd, TUNSETIFF, ifreq('twlr11p', F)); t2 = time.perf_counter()
    fcntl.ioctl(fd, TUNSETOFFLOAD, 0x67); t3 = time.perf_counter(); os.close(fd); t4 = time.perf_counter()
    o.append(t1-t0); i.append(t2-t1); off.append(t3-t2); c.append(t4-t3)
def q(v): v = sorted(v); return 'median %.0f us, p90 %.0f us, max %.0f us' % (v[len(v)//2]*1e6, v[len(v)*9//10]*1e6, v[-1]*1e6)
print('open          ', q(o)); print('TUNSETIFF     ', q(i)); print('TUNSETOFFLOAD ', q(off)); print('close (detach)', q(c))
# SCM_RIGHTS hand-over: old holder passes its fd to a new process; device never loses its queue
fd = os.open('/dev/net/tun', os.O_RDWR); fcntl.ioctl(fd, TUNSETIFF, ifreq('twlr11p', F))
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
ts = []
for k in range(300):
    t0 = time.perf_counter()
    a.sendmsg([b'tun'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]))])
    msg, anc, fl, ad = b.recvmsg(16, socket.CMSG_SPACE(4))
    nfd = array.array('i', anc[0][2])[0]; ts.append(time.perf_counter()-t0); os.close(nfd)
print('SCM_RIGHTS pass of the TUN fd', q(ts))
fcntl.ioctl(fd, TUNSETPERSIST, 0); os.close(fd)
