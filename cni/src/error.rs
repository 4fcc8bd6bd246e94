//! The CNI error result: what a failed command prints on stdout before it exits non-zero.

use serde_json::{json, Value};
use std::fmt;

/// Error codes from the CNI specification (1.0.0 and 1.1.0), and ours (100 and above).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The switch answered and refused the port (not transient, unlike 11).
    pub const SWITCH_REFUSED: u32 = 100;
    /// CHECK found the attachment different from its result.
    pub const CHECK_FAILED: u32 = 101;
    /// Anything else (the reference plugins' generic code).
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// An error result a delegated plugin (IPAM) printed, passed on as it is.
    pub raw: Option<Value>,
}

pub type Result<T> = std::result::Result<T, CniError>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
            raw: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn internal(msg: impl Into<String>) -> CniError {
        CniError::new(code::INTERNAL, msg)
    }

    /// The error JSON for `cni_version` (the config's, when it could be read).
    pub fn to_json(&self, cni_version: &str) -> Value {
        if let Some(raw) = &self.raw {
            let mut raw = raw.clone();
            if let Some(obj) = raw.as_object_mut() {
                obj.insert("cniVersion".into(), json!(cni_version));
            }
            return raw;
        }
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::INVALID_ENV, "CNI_NETNS is missing").with_details("ADD");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 4, "msg": "CNI_NETNS is missing", "details": "ADD"})
        );
        let bare = CniError::new(code::DECODE, "bad");
        assert!(bare.to_json("1.1.0").get("details").is_none());
    }

    #[test]
    fn a_delegates_error_passes_through() {
        let mut e = CniError::internal("ipam failed");
        e.raw = Some(json!({"cniVersion": "1.0.0", "code": 11, "msg": "busy"}));
        assert_eq!(e.to_json("1.1.0")["code"], 11);
        assert_eq!(e.to_json("1.1.0")["cniVersion"], "1.1.0");
    }
}
