//! The CNI side of Twill: the network config `twill-cni` reads (spec 1.1.0), the result it
//! prints, the environment a runtime sets, and the spec's error codes.

pub mod conflist;
pub mod env;
pub mod error;
pub mod identity;
mod json;
pub mod netconf;
pub mod result;

pub use env::{CniEnv, Command};
pub use error::{CniError, ErrorCode};
pub use identity::{PodIdentity, RecordExtra};
pub use netconf::{IpamConf, NetConf, PortMapping, Protocol, RangeConf, RouteConf};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};

/// Every version `twill-cni` accepts in `cniVersion`, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version `twill-cni` implements.
pub const SPEC_VERSION: &str = "1.1.0";

/// The reply to `CNI_COMMAND=VERSION`.
pub fn version_reply(requested: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": requested.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(SPEC_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// Orders `"a.b.c"` versions numerically; garbage sorts first.
pub fn version_at_least(version: &str, min: &str) -> bool {
    fn parts(v: &str) -> [u32; 3] {
        let mut out = [0; 3];
        for (slot, p) in out.iter_mut().zip(v.split('.')) {
            *slot = p.parse().unwrap_or(0);
        }
        out
    }
    parts(version) >= parts(min)
}
