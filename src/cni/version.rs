//! CNI spec versions: the ones weft-cni speaks, what each allows, and the
//! `VERSION` reply.

use std::fmt;

use super::error::{code, CniError};

/// Every spec version weft-cni supports, oldest first.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A CNI spec version weft-cni supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.1.0 (`ip4`/`ip6` results).
    V0_1_0,
    /// 0.2.0 (`ip4`/`ip6` results).
    V0_2_0,
    /// 0.3.0 (`interfaces`/`ips` with `"version"`).
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0 (adds CHECK and `prevResult` on DEL).
    V0_4_0,
    /// 1.0.0 (`ips` without `"version"`).
    V1_0_0,
    /// 1.1.0 (adds STATUS and GC; results as 1.0.0 plus optional fields).
    V1_1_0,
}

/// The result layouts across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 0.1.0/0.2.0: `ip4`, `ip6`, `dns`.
    Legacy,
    /// 0.3.0/0.3.1/0.4.0: `interfaces`, `ips` (with `"version"`), `routes`, `dns`.
    V03,
    /// 1.0.0/1.1.0: `interfaces`, `ips`, `routes`, `dns`.
    V1,
}

impl Version {
    /// The newest version.
    pub const LATEST: Version = Version::V1_1_0;

    /// Every version, oldest first (as [`SUPPORTED`]).
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// Parses one of [`SUPPORTED`] exactly.
    pub fn parse(s: &str) -> Option<Version> {
        let i = SUPPORTED.iter().position(|v| *v == s)?;
        Version::ALL.get(i).copied()
    }

    /// A netconf's `cniVersion`: absent means 0.1.0 (as libcni's skel);
    /// anything not in [`SUPPORTED`] is error code 1.
    pub fn from_config(s: Option<&str>) -> Result<Version, CniError> {
        let s = s.unwrap_or("");
        if s.is_empty() {
            return Ok(Version::V0_1_0);
        }
        Version::parse(s).ok_or_else(|| {
            CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").details(format!(
                "config is {s:?}, weft-cni supports {}",
                SUPPORTED.join(", ")
            ))
        })
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        let i = Version::ALL.iter().position(|v| *v == self).unwrap_or(0);
        SUPPORTED.get(i).copied().unwrap_or("0.1.0")
    }

    /// The result layout of this version.
    pub fn layout(self) -> Layout {
        match self {
            Version::V0_1_0 | Version::V0_2_0 => Layout::Legacy,
            Version::V0_3_0 | Version::V0_3_1 | Version::V0_4_0 => Layout::V03,
            Version::V1_0_0 | Version::V1_1_0 => Layout::V1,
        }
    }

    /// The version to run the delegate with. The reference plugins 1.1.x
    /// (Debian's containernetworking-plugins) stop at 1.0.0, and 1.1.0 adds
    /// nothing to ADD/DEL/CHECK or to the result layout, so a 1.1.0 request
    /// is delegated as 1.0.0 and its result printed as 1.1.0.
    pub fn for_delegate(self) -> Version {
        self.min(Version::V1_0_0)
    }

    /// Errors (code 1) unless `command` exists in this version: CHECK from
    /// 0.4.0, STATUS and GC from 1.1.0.
    pub fn require(self, command: &str, since: Version) -> Result<(), CniError> {
        if self >= since {
            return Ok(());
        }
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command} is not defined for cniVersion {self}: it needs {since} or later"),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reply to `VERSION`.
pub fn version_reply() -> String {
    serde_json::json!({
        "cniVersion": Version::LATEST.as_str(),
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}
