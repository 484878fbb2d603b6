//! Twill's resources and configs, with their validation. Pure: no sockets, files or
//! namespaces here; callers hand in bytes and get typed values or an error that names the
//! field, the value and the fix.

pub mod backend;
pub mod bgp;
pub mod cni;
pub mod names;
pub mod policy;
pub mod resources;
pub mod wiring;
