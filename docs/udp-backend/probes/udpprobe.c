#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <poll.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
static char buf[64][65536];
int main(int argc, char **argv) {
  const char *mode = argv[1];
  if (!strcmp(mode, "recv")) {
    int s = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    int gro = atoi(argv[2]);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8285)};
    if (bind(s, (void *)&a, sizeof a)) { perror("bind"); return 1; }
    if (gro) printf("setsockopt UDP_GRO: %s\n", setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof one) ? strerror(errno) : "ok");
    fflush(stdout);
    struct mmsghdr m[64]; struct iovec iov[64]; char ctl[64][64];
    int total = 0, calls = 0, datagrams = 0, bytes = 0;
    struct pollfd p = {s, POLLIN};
    while (poll(&p, 1, 1500) > 0) {
      for (int i = 0; i < 64; i++) {
        iov[i].iov_base = buf[i]; iov[i].iov_len = 65536;
        memset(&m[i], 0, sizeof m[i]);
        m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1;
        m[i].msg_hdr.msg_control = ctl[i]; m[i].msg_hdr.msg_controllen = 64;
      }
      int n = recvmmsg(s, m, 64, MSG_DONTWAIT, NULL);
      if (n < 0) { if (errno == EAGAIN) continue; perror("recvmmsg"); return 1; }
      calls++;
      for (int i = 0; i < n; i++) {
        int seg = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m[i].msg_hdr); c; c = CMSG_NXTHDR(&m[i].msg_hdr, c))
          if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) seg = *(int *)CMSG_DATA(c);
        if (datagrams < 6) printf("  datagram %d: %u bytes, UDP_GRO cmsg gso_size=%d\n", datagrams, m[i].msg_len, seg);
        datagrams++; bytes += m[i].msg_len;
      }
    }
    printf("recv: %d recvmmsg calls, %d datagrams (reads), %d bytes\n", calls, datagrams, bytes);
    return 0;
  }
  /* send DST NMSG SEGS GSO_SIZE  (SEGS=0: no UDP_SEGMENT, each message one datagram of GSO_SIZE) */
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons(8285)};
  inet_pton(AF_INET, argv[2], &d.sin_addr);
  int nmsg = atoi(argv[3]), segs = atoi(argv[4]), gso = atoi(argv[5]);
  int one = gso;
  printf("setsockopt UDP_SEGMENT=%d: %s\n", gso, setsockopt(s, SOL_UDP, UDP_SEGMENT, &one, sizeof one) ? strerror(errno) : "ok");
  int zero = 0; setsockopt(s, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero);
  struct mmsghdr m[64]; struct iovec iov[64]; char ctl[64][CMSG_SPACE(sizeof(uint16_t))];
  for (int i = 0; i < nmsg; i++) {
    memset(&m[i], 0, sizeof m[i]);
    iov[i].iov_base = buf[i]; iov[i].iov_len = segs ? segs * gso : gso;
    m[i].msg_hdr.msg_name = &d; m[i].msg_hdr.msg_namelen = sizeof d;
    m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1;
    if (segs) {
      m[i].msg_hdr.msg_control = ctl[i]; m[i].msg_hdr.msg_controllen = sizeof ctl[i];
      struct cmsghdr *c = CMSG_FIRSTHDR(&m[i].msg_hdr);
      c->cmsg_level = SOL_UDP; c->cmsg_type = UDP_SEGMENT; c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      *(uint16_t *)CMSG_DATA(c) = gso;
    }
  }
  int n = sendmmsg(s, m, nmsg, 0);
  if (n < 0) printf("sendmmsg: %s\n", strerror(errno));
  else printf("sendmmsg: %d of %d messages sent (each %d bytes, %d segments of %d)\n", n, nmsg, segs ? segs * gso : gso, segs, gso);
  return 0;
}
