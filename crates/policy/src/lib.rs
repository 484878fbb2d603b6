//! Network policy, pure (no sockets, files or namespaces): the semantics are documented
//! in [`twill_api::policy`].
//!
//! - [`cluster`]: the store's endpoints, labels, namespaces and policies as one pure
//!   snapshot, kept up to date per watch event, with the lookups the others need.
//! - [`model`]: the reference evaluator. Given the cluster's endpoints, namespaces and
//!   policies and one flow (source, destination, port, protocol), it says whether the
//!   flow passes and which policy and rule decided, step by step (`twill policy explain`).
//! - `compile`: the same semantics as nftables rules, address sets and a per-pod dispatch
//!   map, with the smallest change for each update (twilld applies it as one batch).
//!
//! The model is the oracle the dataplane is tested against.

pub mod cluster;
pub mod compile;
pub mod compile_diff;
pub mod compile_eval;
pub mod compile_incr;
pub mod model;
