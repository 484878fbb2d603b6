//! `twilld`, Twill's node agent (flanneld's and calico-node's IPAM role): it picks the node
//! IP, holds the node's blocks of pod addresses in the store under a TTL lease, hands them
//! to `twill-cni` in a node-local file, and serves /healthz, /readyz and /metrics.
//!
//! Pure: [`config`] (parsing), [`autodetect`], [`claims`], the agent's state machine
//! [`machine`], the renderers of [`http`] and [`log`], the state of [`peers`]. I/O edges:
//! [`netinfo`] (netlink), [`peers::Prober`] (ICMP), [`handoff`] (files), [`http::serve`],
//! and the loop in [`agent`] that does what the machine asks.

pub mod agent;
pub mod autodetect;
pub mod backend;
pub mod claims;
pub mod config;
pub mod endpoints;
pub mod handoff;
pub mod http;
pub mod log;
pub mod machine;
pub mod netinfo;
pub mod peers;
pub mod policy;
pub mod routing;

pub use agent::{Agent, AgentError};
pub use config::Config;
