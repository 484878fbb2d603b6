import ctypes, os, fcntl, struct, select, sys, time, signal
libc = ctypes.CDLL('libc.so.6', use_errno=True)
def opentun_in(ns, name):
    nsfd = os.open('/run/netns/' + ns, os.O_RDONLY); assert libc.setns(nsfd, 0x40000000) == 0
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', name.encode(), 1|0x1000|0x4000)); fcntl.ioctl(fd, 0x400454d0, 7); os.close(nsfd); return fd
a = opentun_in('twlr11-a', 'twlr11ta'); b = opentun_in('twlr11-b', 'twlr11tb'); other = {a: b, b: a}
def relay():
    while True:
        r, _, _ = select.select([a, b], [], [])
        for fd in r: os.write(other[fd], os.read(fd, 65546))
def spawn():
    pid = os.fork()
    if pid == 0: relay()
    return pid
c1 = spawn(); open('/tmp/twl-research/relay.ready', 'w').close(); time.sleep(float(sys.argv[1]))
t0 = time.perf_counter(); os.kill(c1, signal.SIGKILL); os.waitpid(c1, 0); c2 = spawn(); t1 = time.perf_counter()
print('SIGKILL relay, fds kept open by the holder, new relay forked: %.2f ms' % ((t1 - t0) * 1e3))
time.sleep(float(sys.argv[2])); os.kill(c2, signal.SIGKILL); os.waitpid(c2, 0)
