//! `twill lab`: a Kubernetes-style cluster built from network namespaces on one machine, with
//! the lab playing the container runtime that calls twill-cni for every pod.
//!
//! - [`plan`]: pure; every name, address and subnet of a lab of N nodes (and 1–2 segments).
//! - [`runtime`]: the runtime's role: conflist → plugin config, CNI env, calling the plugin.
//! - [`build`]: namespaces, bridges, veths, routes (via `ip`), pods, and teardown.
//! - [`state`]: `/run/<name>/state.json`, what `up` made.
//! - [`status`]: live interfaces and addresses per namespace.
//! - [`probe`] and [`check`]: in-namespace listeners and probes; the connectivity checks.
//! - [`routes`]: a routing table read for the demo and traces (the l3 story: blackhole, /32s).
//! - [`bench`]: iperf3 pod→pod against the bare underlay and a hand-built twin;
//!   [`bench_udp`]: the udp backend's bench (Twill vs kernel VXLAN vs the flannel-style
//!   baseline, [`bench_udp_baseline`]).
//! - [`ovs`]: `--backend ovs`: an ovsdb-server and ovs-vswitchd per node, read back.

pub mod bench;
pub mod bench_ovs;
pub mod bench_udp;
pub mod bench_udp_baseline;
pub mod build;
pub mod check;
pub mod daemons;
pub mod graph;
pub mod netpol;
pub mod netpol_probe;
pub mod ovs;
pub mod plan;
pub mod probe;
pub mod routes;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod status;
pub mod trace;

pub use build::{down, exec, load, up, LabError};
pub use plan::{LabPlan, LabSpec};
pub use state::LabState;
