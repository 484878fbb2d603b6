//! Twill's userspace UDP overlay: the datapath behind `backend: udp` (issue 11; the design,
//! with what this kernel was probed to offer, is docs/udp-backend/design.md).
//!
//! flannel's udp backend reads each IP packet from the TUN device flannel0 and sends it in a
//! UDP datagram (the bare inner packet, no header) to the node that holds the destination's
//! subnet; the far side writes it back into its TUN. Twill keeps that wire format (port 8285)
//! and makes it fast: IFF_VNET_HDR with TUNSETOFFLOAD (TSO/USO super-packets instead of
//! MTU-sized ones), UDP_SEGMENT and UDP_GRO, sendmmsg/recvmmsg batches, one TUN queue per
//! worker. It only lets in what comes from a known peer's node IP with an inner source in
//! that peer's blocks.
//!
//! Pure modules (no fd, no socket, no file): `table` (peers and the longest-prefix match),
//! `filter` (what is admitted and why not), `ctl` (the control protocol between twilld and
//! the `twill-datapath` process), `virtio`, `gso`, `gro` (the offload framing), `partial`
//! (partial inner checksums between Twill peers), `steer` (which TUN queue a flow is written
//! into), `stats`.
//! The I/O edges: `tun`, `udp`, the workers and the control server.

pub mod checksum;
pub mod client;
pub mod ctl;
pub mod filter;
pub mod gro;
pub mod gso;
pub mod partial;
pub mod published;
pub mod run;
pub mod seqpacket;
pub mod server;
pub mod stats;
pub mod steer;
pub mod table;
pub mod tun;
pub mod udp;
pub mod virtio;
pub mod worker;
