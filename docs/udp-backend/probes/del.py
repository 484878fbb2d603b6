import os, fcntl, struct, subprocess, errno
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', b'twlr11d', 1|0x1000|0x4000|0x100)); fcntl.ioctl(fd, 0x400454cb, 1)
r = subprocess.run(['ip', 'link', 'del', 'twlr11d'], capture_output=True, text=True)
print('ip link del with a queue attached: rc', r.returncode, r.stderr.strip(), '; exists after:', os.path.exists('/sys/class/net/twlr11d'))
try: os.read(fd, 100)
except OSError as e: print('read on the fd after delete:', errno.errorcode[e.errno])
os.close(fd)
