import fcntl, os, struct, socket, time, errno, subprocess
TUNSETIFF=0x400454ca; TUNSETPERSIST=0x400454cb; TUNSETOFFLOAD=0x400454d0
IFF_TUN=1; IFF_MQ=0x100; IFF_NO_PI=0x1000; IFF_VNET=0x4000
F = IFF_TUN|IFF_NO_PI|IFF_VNET|IFF_MQ
def ifreq(name, flags): return struct.pack('16sH22x', name.encode(), flags)
def opentun(name, flags):
    fd = os.open('/dev/net/tun', os.O_RDWR)
    try: fcntl.ioctl(fd, TUNSETIFF, ifreq(name, flags))
    except: os.close(fd); raise
    return fd
def sh(c): return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
def state(): return sh("ip -o link show twlr11p | sed 's/link.*//'; ip route show dev twlr11p; cat /sys/class/net/twlr11p/carrier 2>&1")
sh('ip link set lo up')
fd = opentun('twlr11p', F); fcntl.ioctl(fd, TUNSETOFFLOAD, 0x67); fcntl.ioctl(fd, TUNSETPERSIST, 1)
sh('ip addr add 10.244.9.1/32 dev twlr11p; ip link set twlr11p up mtu 1472; ip route add 10.244.7.0/24 dev twlr11p')
print('attached:', state())
os.close(fd)
print('detached (persistent, no fd):', state())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try: s.sendto(b'x', ('10.244.7.5', 9)); print('send while detached: ok (silently dropped)')
except OSError as e: print('send while detached:', e)
print(sh("ip -s link show twlr11p | sed -n '/TX/,+1p'"))
# re-attach timing
ts = []
for i in range(2000):
    t0 = time.perf_counter(); fd = opentun('twlr11p', F); fcntl.ioctl(fd, TUNSETOFFLOAD, 0x67); ts.append(time.perf_counter()-t0); os.close(fd)
ts.sort(); print('re-attach open+TUNSETIFF+TUNSETOFFLOAD (python): median %.1f us, p99 %.1f us, max %.1f us' % (ts[1000]*1e6, ts[1980]*1e6, ts[-1]*1e6))
print('after re-attach cycles:', state())
print('features after reattach:', sh("ethtool -k twlr11p | grep -E '^(tcp-seg|tx-udp-seg|tx-check)'").replace('\n','; '))
fd = opentun('twlr11p', F)
print('with fd attached again:', state())
# other flags
for n, fl in [('without MQ', IFF_TUN|IFF_NO_PI|IFF_VNET), ('without VNET_HDR', IFF_TUN|IFF_NO_PI|IFF_MQ)]:
    try: x = opentun('twlr11p', fl); print('re-attach', n, ': ok'); os.close(x)
    except OSError as e: print('re-attach', n, ':', errno.errorcode[e.errno])
# fd outlives its creator: fork, parent closes, child holds
os.close(fd)
fcntl_fd = opentun('twlr11q', IFF_TUN|IFF_NO_PI|IFF_VNET)  # non-persistent
pid = os.fork()
if pid == 0:
    time.sleep(0.5); os._exit(0)
os.close(fcntl_fd)
print('non-persistent, creator closed, child holds fd: exists =', os.path.exists('/sys/class/net/twlr11q'))
os.waitpid(pid, 0); time.sleep(0.05)
print('after child exit: exists =', os.path.exists('/sys/class/net/twlr11q'))
fd = opentun('twlr11p', F); fcntl.ioctl(fd, TUNSETPERSIST, 0); os.close(fd)
print('after TUNSETPERSIST 0 + close: exists =', os.path.exists('/sys/class/net/twlr11p'))
