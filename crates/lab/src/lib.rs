//! The lab (work in progress).
