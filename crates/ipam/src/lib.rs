//! Node-local address management for Twill: the allocator `twill-cni` calls on every pod
//! ADD, DEL and GC (the role of CNI's host-local).
//!
//! - [`pool`] (pure): ranges, reservations, capacity and the round-robin candidate order.
//! - [`records`] (I/O edge): the per-network record directory that turns a candidate into a
//!   held address atomically across concurrent CNI processes, with per-attachment records so
//!   DEL and GC are exact and idempotent.

pub mod blocks;
pub mod pool;
pub mod records;

pub use blocks::BlockSpace;
pub use pool::{Pool, PoolError, Range, Reservation};
pub use records::{AttachmentKey, Record, RecordDir, RecordError, DEFAULT_DATA_DIR};
pub use twill_api::names::{
    validate_container_id, validate_ifname, validate_network_name, InvalidName,
};
