import fcntl, os, struct, socket, time, errno, subprocess, sys
TUNSETIFF=0x400454ca; TUNSETPERSIST=0x400454cb; TUNSETOFFLOAD=0x400454d0
TUNGETFEATURES=0x800454cf; TUNSETQUEUE=0x400454d9; TUNGETVNETHDRSZ=0x800454d7; TUNSETVNETHDRSZ=0x400454d8
TUNGETIFF=0x800454d2
IFF_TUN=1; IFF_NAPI=0x10; IFF_NAPI_FRAGS=0x20; IFF_MQ=0x100; IFF_ATTACH=0x200; IFF_DETACH=0x400
IFF_NO_PI=0x1000; IFF_VNET=0x4000
CSUM,TSO4,TSO6,ECN,UFO,USO4,USO6=1,2,4,8,0x10,0x20,0x40
def ifreq(name, flags): return struct.pack('16sH22x', name.encode(), flags)
def opentun(name, flags):
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, ifreq(name, flags)); return fd
def res(f):
    try: f(); return 'ok'
    except OSError as e: return errno.errorcode[e.errno]
fd = os.open('/dev/net/tun', os.O_RDWR)
feat = struct.unpack('I', fcntl.ioctl(fd, TUNGETFEATURES, b'\0'*4))[0]
print('TUNGETFEATURES 0x%x' % feat, {n: bool(feat & v) for n, v in [('TUN',1),('NAPI',0x10),('NAPI_FRAGS',0x20),('MULTI_QUEUE',0x100),('NO_PI',0x1000),('VNET_HDR',0x4000)]})
os.close(fd)
fd = opentun('twlr11t0', IFF_TUN|IFF_NO_PI|IFF_VNET)
print('vnet hdr size', struct.unpack('i', fcntl.ioctl(fd, TUNGETVNETHDRSZ, b'\0'*4))[0])
for name, v in [('CSUM',CSUM),('CSUM|TSO4|TSO6',CSUM|TSO4|TSO6),('CSUM|TSO4|TSO6|USO4|USO6',CSUM|TSO4|TSO6|USO4|USO6),
                ('CSUM|USO4',CSUM|USO4),('TSO4 (no CSUM)',TSO4),('CSUM|TSO4|TSO6|ECN|USO4|USO6',CSUM|TSO4|TSO6|ECN|USO4|USO6),('CSUM|UFO',CSUM|UFO),('0',0)]:
    print('TUNSETOFFLOAD', name, res(lambda: fcntl.ioctl(fd, TUNSETOFFLOAD, v)))
fcntl.ioctl(fd, TUNSETOFFLOAD, CSUM|TSO4|TSO6|USO4|USO6)
print('TUNSETVNETHDRSZ 12', res(lambda: fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack('i',12))))
print(subprocess.run(['ethtool','-k','twlr11t0'],capture_output=True,text=True).stdout.count('on'), 'features on')
print([l.strip() for l in subprocess.run(['ethtool','-k','twlr11t0'],capture_output=True,text=True).stdout.splitlines() if any(k in l for k in ('tcp-segmentation-offload:','tx-udp-segmentation','tx-checksumming:','generic-segmentation','generic-receive'))])
os.close(fd)
# multi-queue
a = opentun('twlr11mq', IFF_TUN|IFF_NO_PI|IFF_VNET|IFF_MQ); b = opentun('twlr11mq', IFF_TUN|IFF_NO_PI|IFF_VNET|IFF_MQ)
print('MQ two queues ok; queues:', sorted(os.listdir('/sys/class/net/twlr11mq/queues')))
print('TUNSETQUEUE detach', res(lambda: fcntl.ioctl(b, TUNSETQUEUE, ifreq('', IFF_DETACH))),
      'attach', res(lambda: fcntl.ioctl(b, TUNSETQUEUE, ifreq('', IFF_ATTACH))))
print('open MQ dev w/o IFF_MULTI_QUEUE', res(lambda: opentun('twlr11mq', IFF_TUN|IFF_NO_PI|IFF_VNET)))
qs=[]
try:
    for i in range(300): qs.append(opentun('twlr11mq', IFF_TUN|IFF_NO_PI|IFF_VNET|IFF_MQ))
except OSError as e: print('max queues: %d (then %s)' % (len(qs)+2, errno.errorcode[e.errno]))
for q in qs: os.close(q)
os.close(a); os.close(b)
print('MQ dev gone after close:', not os.path.exists('/sys/class/net/twlr11mq'))
