//! A worker: one thread, one TUN queue, one receive socket (in the port's `SO_REUSEPORT`
//! group), one send socket (ephemeral port), one eventfd to wake it. It reads its own queue,
//! but writes what arrives into the queue of the packet's flow ([`steer`]).
//!
//! The loop (flannel's `run_proxy`, batched): while either direction moved a packet it goes
//! round again without polling; when neither did, it `poll`s the TUN, the receive socket and
//! the eventfd (and the send socket for POLLOUT while a batch waits on a full socket buffer).
//! Each round:
//! - the peer table is refreshed once ([`Reader::refresh`]: one Acquire load when nothing
//!   changed); a new table rotates the worker's counters ([`Ledger::rotate`]);
//! - **TUN → UDP**: up to [`TX_BUDGET`] reads, each straight into a [`SendBatch`] slot;
//!   [`route_tx`] picks the peer; then one `sendmmsg`. A miss is [`Drop::NoRoute`] and
//!   flannel's ICMP net unreachable goes back into the TUN (at most one per millisecond);
//! - **UDP → TUN**: one `recvmmsg` of [`RX_SLOTS`] datagrams; each inner packet (a GRO read is
//!   cut at its `gro_size`) goes through [`admit`] and is written into the TUN.
//!
//! With a vnet header on the queue (offloads on, the default; `--plain` turns them off) each
//! TUN read is a `virtio_net_hdr` and a packet, maybe a TSO/USO super-packet, read straight
//! into a [`GatherBatch`] slot and left there: `gso::split_headers` writes only the segments'
//! headers, and each UDP_SEGMENT chunk (≤ 128 segments, ≤ 65,507 B) is one message of the
//! same `sendmmsg` gathering `[header, payload]` iovecs, so the frame is copied once, by the
//! kernel. A GSO send refused with EIO/EINVAL goes again as one datagram per segment
//! (counted in `gso_fallbacks`), and GSO stays off for the worker (the batch says so). RX: the sockets have UDP_GRO; each read
//! is cut at its gro_size (`gro::cut`), every inner packet is admitted, and `gro::coalesce`
//! merges them into super-packets, one `writev` (header + parts) each.
//!
//! The budgets keep one direction from starving the other: a round moves at most 64 packets
//! out and one `recvmmsg` in. A full socket buffer (EAGAIN) leaves the batch pending and stops
//! TUN reads until POLLOUT: the TUN queue holds the backlog, as the kernel's own queues would.
//!
//! Before the first Table nothing is forwarded: what arrives is read and discarded (so the
//! queues do not stay readable), uncounted: there are no peers to count it against yet.
//!
//! Counting: `tx_*`/`rx_*` are inner packets and bytes per peer. A send the kernel refuses
//! (ENETUNREACH, EPERM from a firewall, EMSGSIZE) is [`Drop::SendFailed`], a TUN write it
//! refuses [`Drop::WriteFailed`], both against the peer.
//!
//! The ICMP error's source is the unreachable destination ([`net_unreachable`] says why).

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::filter::{admit, net_unreachable, route_tx, Drop, ICMP_ERROR_MAX};
use crate::gro::{self, Coalesced, GroOptions};
use crate::gso::{self, Split};
use crate::partial;
use crate::published::{Published, Reader};
use crate::stats::{Counters, Ledger};
use crate::steer;
use crate::table::{PeerId, PeerTable};
use crate::tun::TunQueue;
use crate::udp::{GatherBatch, RecvBatch, SendBatch, Sent, SlotMeta};
use crate::virtio::VirtioNetHdr;

/// TUN reads per round (and the send batch's slots).
pub const TX_BUDGET: usize = 64;
/// Datagrams per `recvmmsg`.
pub const RX_SLOTS: usize = 32;
/// A TX slot holds the largest packet a TUN of MTU ≤ 65,535 hands out.
const TX_SLOT: usize = 65_536;
/// The offload batch's header room, iovecs and messages: 64 frames of 46 segments (TUN MTU
/// 1472) take 153 KiB of headers, 5,888 iovecs and 128 messages.
const GATHER_HDR_BYTES: usize = 512 * 1024;
const GATHER_IOVS: usize = 8192;
const GATHER_MSGS: usize = 1024;
/// A TUN read starts only with room for a frame of this many segments with the longest
/// headers (a bigger one sends the batch first).
const ROOM_SEGMENTS: usize = 256;
/// IPv4 and TCP headers with all their options.
const MAX_HDR_LEN: usize = 120;

/// The table the workers forward with: `None` until the first Table arrives.
pub type SharedTable = Arc<Published<Option<PeerTable>>>;

/// An eventfd: the ctl side wakes a worker (or the accept loop) with it.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd(2) with constant flags.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to an eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: an 8-byte read from an eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What a worker shares with the rest of the process.
pub struct Shared {
    pub table: SharedTable,
    pub ledger: Arc<Ledger>,
    pub stop: AtomicBool,
}

/// One worker's fds.
pub struct WorkerIo {
    /// The queue this worker reads.
    pub tun: Arc<TunQueue>,
    /// Every worker's queue, by index: what arrives is written into the one its flow hashes
    /// to ([`steer::queue`]), so both directions of a flow stay on one queue and one worker.
    pub queues: Arc<[Arc<TunQueue>]>,
    /// The TUN took USO4|USO6 (so UDP may be coalesced into UDP_L4 writes).
    pub uso: bool,
    pub rx: Arc<OwnedFd>,
    pub tx: OwnedFd,
    pub waker: Arc<Waker>,
}

impl WorkerIo {
    /// The queue an arriving packet (or super-packet, by its first segment) is written into.
    fn queue_for(&self, pkt: &[u8]) -> &TunQueue {
        &self.queues[steer::queue(pkt, self.queues.len())]
    }
}

/// Runs worker `index` until `shared.stop` (checked after every wake). Returns the error that
/// stopped it otherwise (the TUN gone under it: EBADFD after `ip link del`).
pub fn run(index: usize, io: WorkerIo, shared: Arc<Shared>) -> io::Result<()> {
    let io_vnet = io.tun.mode().vnet_hdr;
    let mut w = Worker {
        io,
        out: SendBatch::new(if io_vnet { 0 } else { TX_BUDGET }, TX_SLOT),
        gather: if io_vnet {
            GatherBatch::new(
                TX_BUDGET,
                VirtioNetHdr::LEN + TX_SLOT,
                GATHER_HDR_BYTES,
                GATHER_IOVS,
                GATHER_MSGS,
            )
        } else {
            GatherBatch::new(0, 0, 0, 0, 0)
        },
        inb: RecvBatch::new(RX_SLOTS),
        icmp_at: None,
        vnet: io_vnet,
        packets: Vec::new(),
        co: Coalesced::new(),
    };
    let mut reader: Reader<Option<PeerTable>> = shared.table.reader();
    let mut counters = reader
        .get()
        .as_ref()
        .map(|t| shared.ledger.rotate(index, t));
    while !shared.stop.load(Ordering::Relaxed) {
        if reader.refresh() {
            counters = reader
                .get()
                .as_ref()
                .map(|t| shared.ledger.rotate(index, t));
        }
        let (tx, rx) = match (reader.get(), counters.as_deref()) {
            (Some(t), Some(c)) => (w.tun_to_udp(t, c)?, w.udp_to_tun(t, c)?),
            _ => (w.discard_tun()?, w.discard_udp()?),
        };
        if !tx && !rx {
            w.wait()?;
        }
    }
    Ok(())
}

struct Worker {
    io: WorkerIo,
    /// The plain path's batch (a slot per packet).
    out: SendBatch,
    /// The offload path's batch (frames left where they were read, gathered by iovecs).
    gather: GatherBatch,
    inb: RecvBatch,
    icmp_at: Option<Instant>,
    /// The queue has a vnet header (offloads on): the GSO/GRO paths.
    vnet: bool,
    /// vnet RX: the admitted inner packets of one recvmmsg (ranges into the receive buffer).
    packets: Vec<Range<usize>>,
    co: Coalesced,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Worker {
    fn wait(&mut self) -> io::Result<()> {
        let blocked = self.out.pending() > 0 || self.gather.pending() > 0;
        let mut fds = [
            libc::pollfd {
                fd: self.io.tun.as_raw_fd(),
                events: if blocked { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: self.io.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.io.waker.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.io.tx.as_raw_fd(),
                events: if blocked { libc::POLLOUT } else { 0 },
                revents: 0,
            },
        ];
        // SAFETY: a valid pollfd array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if fds[2].revents != 0 {
            self.io.waker.drain();
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // The device went away (ip link del): the next read says why.
            let mut b = [0u8; 1];
            self.io.tun.read(&mut b)?;
        }
        Ok(())
    }

    fn flush(&mut self, c: &Counters) -> io::Result<()> {
        let r = self.out.send(self.io.tx.as_raw_fd(), |m, len, sent| {
            let peer = PeerId(m.tag);
            match sent {
                Sent::Ok | Sent::Segmented => c.tx(peer, u64::from(m.packets), len as u64),
                Sent::Failed(_) => c.dropped(Some(peer), Drop::SendFailed),
            }
        });
        match r {
            Err(e) if !would_block(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// TUN → UDP. True when a packet moved.
    fn tun_to_udp(&mut self, table: &PeerTable, c: &Counters) -> io::Result<bool> {
        if self.vnet {
            return self.tun_to_udp_vnet(table, c);
        }
        if self.out.pending() > 0 {
            self.flush(c)?;
            if self.out.pending() > 0 {
                return Ok(false); // still blocked: wait for POLLOUT
            }
        }
        let mut moved = false;
        while !self.out.is_full() {
            let slot = self.out.slot();
            let n = match self.io.tun.read(slot) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            moved = true;
            let pkt = &slot[..n];
            match route_tx(table, pkt) {
                Ok(peer) => {
                    let dst = table.peer(peer).addr();
                    self.out.commit(
                        n,
                        dst,
                        SlotMeta {
                            tag: peer.0,
                            segment: 0,
                            packets: 1,
                        },
                    );
                }
                Err(d) => {
                    c.dropped(None, d);
                    if d == Drop::NoRoute {
                        let _ = unreachable(&self.io.tun, false, &mut self.icmp_at, pkt);
                    }
                }
            }
        }
        if self.out.pending() > 0 {
            self.flush(c)?;
        }
        Ok(moved)
    }

    /// UDP → TUN. True when a datagram arrived.
    fn udp_to_tun(&mut self, table: &PeerTable, c: &Counters) -> io::Result<bool> {
        if self.vnet {
            return self.udp_to_tun_vnet(table, c);
        }
        let n = match self.inb.recv(self.io.rx.as_raw_fd()) {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        for i in 0..n {
            let d = self.inb.get(i);
            let (src, truncated, gro_size) = (*d.src.ip(), d.truncated, d.gro_size);
            if truncated {
                c.dropped(table.peer_by_ip(src), Drop::BadHeader);
                continue;
            }
            let range = self.inb.range(i);
            if range.is_empty() {
                c.dropped(table.peer_by_ip(src), Drop::Short);
                continue;
            }
            let seg = gro_size.map_or(range.len(), usize::from);
            for inner in self.inb.buf_mut()[range].chunks_mut(seg) {
                match admit(table, src, inner) {
                    Ok(peer) => {
                        // A TUN without vnet headers takes no NEEDS_CSUM: a Twill peer's
                        // partial checksum is finished here.
                        if let Some(at) = partial::partial_at(inner) {
                            partial::finish(inner, at);
                        }
                        match self.io.queue_for(inner).write(inner) {
                            Ok(_) => c.rx(peer, 1, inner.len() as u64),
                            Err(_) => c.dropped(Some(peer), Drop::WriteFailed),
                        }
                    }
                    Err(drop) => c.dropped(table.peer_by_ip(src), drop),
                }
            }
        }
        Ok(true)
    }

    /// TUN → UDP with offloads: each read is a vnet header and a packet, maybe a TSO/USO
    /// super-packet, read straight into a [`GatherBatch`] slot and left there:
    /// `gso::split_headers` writes the segments' headers into the batch's header room and
    /// each chunk (≤ 128 segments, ≤ 65,507 B) is one message gathering `[hdr, payload]`
    /// iovecs with UDP_SEGMENT, so the frame is copied once, by the kernel.
    fn tun_to_udp_vnet(&mut self, table: &PeerTable, c: &Counters) -> io::Result<bool> {
        if self.gather.pending() > 0 {
            self.flush_gather(c)?;
            if self.gather.pending() > 0 {
                return Ok(false);
            }
        }
        let mut moved = false;
        for _ in 0..TX_BUDGET {
            // Room for a usual frame; a bigger one flushes first (`make_room`).
            if !self.gather.fits(
                2 * ROOM_SEGMENTS,
                ROOM_SEGMENTS.div_ceil(gso::MAX_SEGMENTS) + 1,
            ) {
                break;
            }
            let Some(stage) = self.gather.stage() else {
                break;
            };
            if stage.hdrs.len() < ROOM_SEGMENTS * MAX_HDR_LEN {
                break;
            }
            let n = match self.io.tun.read(stage.read) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            moved = true;
            self.stage_frame(n, table, c)?;
        }
        if self.gather.pending() > 0 {
            self.flush_gather(c)?;
        }
        Ok(moved)
    }

    /// One frame of `n` bytes in the staged read slot: routed, split (headers only) and
    /// pushed as messages, or dropped and counted.
    fn stage_frame(&mut self, n: usize, table: &PeerTable, c: &Counters) -> io::Result<()> {
        let stage = self.gather.stage().expect("staged by the caller");
        let Ok(hdr) = VirtioNetHdr::decode(&stage.read[..n]) else {
            c.dropped(None, Drop::BadOffload);
            return Ok(());
        };
        let pkt = &mut stage.read[VirtioNetHdr::LEN..n];
        let peer = match route_tx(table, pkt) {
            Ok(p) => p,
            Err(d) => {
                c.dropped(None, d);
                if d == Drop::NoRoute {
                    let _ = unreachable(&self.io.tun, true, &mut self.icmp_at, pkt);
                }
                return Ok(());
            }
        };
        let dst = table.peer(peer).addr();
        let meta = |segment: usize, packets: usize| SlotMeta {
            tag: peer.0,
            segment: segment as u16,
            packets: packets as u16,
        };
        let checksums = table.peer(peer).checksums;
        let segs = match gso::split_headers(&hdr, pkt, stage.hdrs, checksums) {
            Err(gso::GsoError::OutTooSmall { .. }) => {
                // More segments than the room left: send what waits, then split again
                // from an empty batch (a frame that does not fit even then is refused).
                if self.make_room(n, c)? {
                    return self.stage_frame(n, table, c);
                }
                c.dropped(Some(peer), Drop::BadOffload);
                return Ok(());
            }
            Err(_) => {
                c.dropped(Some(peer), Drop::BadOffload);
                return Ok(());
            }
            Ok(Split::Whole) => {
                self.gather.push_read(VirtioNetHdr::LEN..n);
                self.gather.end_msg(dst, meta(0, 1));
                self.gather.keep(0);
                return Ok(());
            }
            Ok(Split::Segments(s)) => s,
        };
        let gso_on = self.gather.gso();
        let msgs = if gso_on {
            segs.chunks().count()
        } else {
            segs.segments
        };
        if !self.gather.fits(2 * segs.segments, msgs) {
            if self.make_room(n, c)? {
                return self.stage_frame(n, table, c);
            }
            c.dropped(Some(peer), Drop::BadOffload);
            return Ok(());
        }
        let off = VirtioNetHdr::LEN;
        for ch in segs.chunks() {
            let range = segs.chunk_segments(&ch);
            for i in range.clone() {
                self.gather.push_hdr(segs.header(i));
                let p = segs.payload(i);
                self.gather.push_read(off + p.start..off + p.end);
                if !gso_on {
                    self.gather.end_msg(dst, meta(0, 1));
                }
            }
            if gso_on {
                let segment = if ch.segments > 1 { ch.segment_size } else { 0 };
                self.gather.end_msg(dst, meta(segment, ch.segments));
            }
        }
        self.gather.keep(segs.segments * segs.hdr_len);
        Ok(())
    }

    /// Makes room for the staged frame (`n` bytes) that did not fit what is left of the
    /// header room, the iovecs or the messages: when the batch holds other frames, sends them
    /// (waiting for the socket if it must) and moves the frame to the first slot. False
    /// when the batch was already empty: the frame cannot fit.
    fn make_room(&mut self, n: usize, c: &Counters) -> io::Result<bool> {
        let Some(from) = self.gather.staged_slot().filter(|&k| k > 0) else {
            return Ok(false);
        };
        while self.gather.pending() > 0 {
            self.flush_gather(c)?;
            if self.gather.pending() > 0 {
                let mut p = libc::pollfd {
                    fd: self.io.tx.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
        }
        self.gather.move_to_first(from, n);
        Ok(true)
    }

    fn flush_gather(&mut self, c: &Counters) -> io::Result<()> {
        let r = self
            .gather
            .send(self.io.tx.as_raw_fd(), |m, len, sent| match sent {
                Sent::Ok => c.tx(PeerId(m.tag), u64::from(m.packets), len as u64),
                Sent::Segmented => {
                    c.gso_fallback();
                    c.tx(PeerId(m.tag), u64::from(m.packets), len as u64)
                }
                Sent::Failed(_) => c.dropped(Some(PeerId(m.tag)), Drop::SendFailed),
            });
        match r {
            Err(e) if !would_block(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// UDP → TUN with offloads: GRO reads cut at their gso_size, each inner packet admitted,
    /// then `gro::coalesce` into super-packets, one `writev` each.
    fn udp_to_tun_vnet(&mut self, table: &PeerTable, c: &Counters) -> io::Result<bool> {
        let n = match self.inb.recv(self.io.rx.as_raw_fd()) {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.packets.clear();
        let mut cut = Vec::new();
        for i in 0..n {
            let d = self.inb.get(i);
            let src = *d.src.ip();
            if d.truncated {
                c.dropped(table.peer_by_ip(src), Drop::BadHeader);
                continue;
            }
            if d.data.is_empty() {
                c.dropped(table.peer_by_ip(src), Drop::Short);
                continue;
            }
            let gso_size = d.gro_size.map_or(0, usize::from);
            let range = self.inb.range(i);
            cut.clear();
            gro::cut(range, gso_size, &mut cut);
            let buf = self.inb.buf_mut();
            for r in cut.drain(..) {
                match admit(table, src, &buf[r.clone()]) {
                    Ok(peer) => {
                        c.rx(peer, 1, r.len() as u64);
                        self.packets.push(r);
                    }
                    Err(drop) => c.dropped(table.peer_by_ip(src), drop),
                }
            }
        }
        let opts = GroOptions { udp: self.io.uso };
        gro::coalesce(self.inb.buf_mut(), &self.packets, opts, &mut self.co);
        let buf = self.inb.buf_mut();
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(gso::MAX_SEGMENTS + 1);
        for (item, parts) in self.co.items() {
            let h = item.hdr.to_bytes();
            iov.clear();
            iov.push(libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            });
            for p in parts {
                iov.push(libc::iovec {
                    iov_base: buf[p.clone()].as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                });
            }
            let first = parts.first().map_or(&[][..], |p| &buf[p.clone()]);
            if self.io.queue_for(first).writev(&iov).is_err() {
                c.dropped(None, Drop::WriteFailed);
            }
        }
        Ok(true)
    }

    fn discard_tun(&mut self) -> io::Result<bool> {
        let mut moved = false;
        let slot = if self.vnet {
            self.gather.stage().expect("an empty batch has slots").read
        } else {
            self.out.slot()
        };
        for _ in 0..TX_BUDGET {
            match self.io.tun.read(slot) {
                Ok(_) => moved = true,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    fn discard_udp(&mut self) -> io::Result<bool> {
        match self.inb.recv(self.io.rx.as_raw_fd()) {
            Ok(_) => Ok(true),
            Err(e) if would_block(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Writes flannel's net unreachable for `pkt` into the TUN (with a zero vnet header when
/// the queue has one), at most one per millisecond.
fn unreachable(tun: &TunQueue, vnet: bool, at: &mut Option<Instant>, pkt: &[u8]) -> io::Result<()> {
    let now = Instant::now();
    if at.is_some_and(|t| now.duration_since(t) < Duration::from_millis(1)) {
        return Ok(());
    }
    let off = if vnet { VirtioNetHdr::LEN } else { 0 };
    let mut buf = [0u8; VirtioNetHdr::LEN + ICMP_ERROR_MAX];
    if let Some(len) = net_unreachable(pkt, &mut buf[off..]) {
        *at = Some(now);
        tun.write(&buf[..off + len])?;
    }
    Ok(())
}
