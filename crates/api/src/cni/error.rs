//! The CNI error codes and the error JSON a plugin prints on failure.

use serde::Serialize;

/// Error codes, as the CNI spec (1.1.0, "Error") numbers them; 100+ are Twill's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: "Incompatible CNI version".
    IncompatibleVersion,
    /// 2: "Unsupported field in network configuration. The error message must contain the
    /// key and value of the unsupported field."
    UnsupportedField,
    /// 3: "Container unknown or does not exist."
    UnknownContainer,
    /// 4: "Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID, etc.
    /// The error message must contain the names of invalid variables."
    InvalidEnvironment,
    /// 5: "I/O failure."
    Io,
    /// 6: "Failed to decode content."
    Decode,
    /// 7: "Invalid network config."
    InvalidConfig,
    /// 11: "Try again later."
    TryAgainLater,
    /// 50: STATUS: "The plugin is not available (i.e. cannot service ADD requests)".
    NotAvailable,
    /// 100: the address range is exhausted.
    RangeExhausted,
    /// 101: this attachment already holds an address (duplicate ADD).
    AlreadyAttached,
    /// 102: a host port is already mapped by another container.
    HostPortTaken,
    /// 103: a kernel operation (netlink, nftables) failed.
    Kernel,
    /// 104: CHECK found the attachment differs from what ADD made.
    CheckFailed,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::RangeExhausted => 100,
            ErrorCode::AlreadyAttached => 101,
            ErrorCode::HostPortTaken => 102,
            ErrorCode::Kernel => 103,
            ErrorCode::CheckFailed => 104,
        }
    }
}

/// A failure as the runtime sees it: printed as `{"cniVersion","code","msg","details"}`
/// on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn invalid(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code.code(),
            msg: &self.msg,
            details: &self.details,
        })
        .expect("plain struct serializes")
    }
}
