//! CNI errors: the spec's error object (`{"cniVersion", "code", "msg",
//! "details"}`) and its well-known codes.

use serde::{Deserialize, Serialize};

/// Well-known error codes of the CNI spec (0–99), and weft's own (100+).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later (a transient condition, e.g. weftd not ready yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot service ADD).
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft: the delegate plugin failed without a CNI error, crashed or timed out.
    pub const DELEGATE_FAILED: u32 = 100;
    /// weft (CHECK): the node's subnet is not the one the container was added with.
    pub const SUBNET_CHANGED: u32 = 101;
    /// weft: internal error (as libcni's skel uses for untyped errors).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed as JSON on stdout, with exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The error code (see [`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer explanation (may be empty).
    pub details: String,
}

/// The wire form of an error (also used to read a delegate's error).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    cni_version: String,
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the long explanation.
    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Invalid network configuration (code 7).
    pub fn config(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_NETWORK_CONFIG, msg)
    }

    /// Invalid environment variables (code 4).
    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_ENVIRONMENT, msg)
    }

    /// I/O failure (code 5), naming what was being done.
    pub fn io(what: impl std::fmt::Display, err: &std::io::Error) -> CniError {
        CniError::new(code::IO_FAILURE, format!("{what}: {err}"))
    }

    /// Internal error (code 999).
    pub fn internal(msg: impl Into<String>) -> CniError {
        CniError::new(code::INTERNAL, msg)
    }

    /// The error as the spec's JSON object, tagged with `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        let wire = Wire {
            cni_version: cni_version.to_owned(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{cni_version}","code":999,"msg":"cannot encode the error"}}"#
            )
        })
    }

    /// Reads a CNI error object (a delegate's stdout on failure); `None` if
    /// the bytes are not one.
    pub fn from_json(bytes: &[u8]) -> Option<CniError> {
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        Some(CniError {
            code: wire.code,
            msg: wire.msg,
            details: wire.details,
        })
    }
}
