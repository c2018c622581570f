//! CNI results per spec version and the conversion between them.
//!
//! Every result is read into one version-neutral [`CniResult`] (the 1.1.0
//! shape) and rendered in the requested version:
//! - 0.1.0/0.2.0: `ip4`/`ip6` objects (`ip`, `gateway`, `routes`) and `dns`;
//!   going down, the first IPv4 and the first IPv6 address are kept, routes go
//!   to the object of their destination's family, interfaces are dropped. A
//!   result with no address cannot be expressed (error 999).
//! - 0.3.0/0.3.1/0.4.0: `interfaces`, `ips` with `"version": "4"|"6"` (filled
//!   in from the address going up), `routes`, `dns`.
//! - 1.0.0: as 0.4.0 without `"version"`; 1.1.0: plus the optional interface
//!   (`mtu`, `socketPath`, `pciID`) and route (`mtu`, `advmss`, `priority`,
//!   `table`, `scope`) fields, which are dropped for older versions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::CniError;
use super::types::{Cidr, Dns, Interface, IpConfig, IpConfig04, Route};
use super::version::{Layout, Version};

/// A result, independent of its spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes set up.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

/// `ip4`/`ip6` of a 0.1.0/0.2.0 result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IpLegacy {
    ip: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Legacy {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<IpLegacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<IpLegacy>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
struct V03 {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpConfig04>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
struct V1 {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

fn bad_result(what: &str, err: impl std::fmt::Display) -> CniError {
    CniError::internal(format!("cannot read {what}: {err}"))
}

impl CniResult {
    /// Reads a result. Its layout follows its own `cniVersion` if that is a
    /// known version, else `fallback` (the version it was requested in).
    /// `what` names the result in error messages.
    pub fn parse(json: &Value, fallback: Version, what: &str) -> Result<CniResult, CniError> {
        let version = json
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(Version::parse)
            .unwrap_or(fallback);
        let mut json = json.clone();
        if let Some(obj) = json.as_object_mut() {
            obj.insert("cniVersion".into(), version.as_str().into());
        }
        match version.layout() {
            Layout::Legacy => {
                let r: Legacy = serde_json::from_value(json).map_err(|e| bad_result(what, e))?;
                let mut out = CniResult {
                    dns: r.dns,
                    ..CniResult::default()
                };
                for ip in [r.ip4, r.ip6].into_iter().flatten() {
                    out.ips.push(IpConfig {
                        interface: None,
                        address: ip.ip,
                        gateway: ip.gateway,
                    });
                    out.routes.extend(ip.routes);
                }
                Ok(out)
            }
            Layout::V03 => {
                let r: V03 = serde_json::from_value(json).map_err(|e| bad_result(what, e))?;
                Ok(CniResult {
                    interfaces: r.interfaces,
                    ips: r.ips.into_iter().map(|ip| ip.ip).collect(),
                    routes: r.routes,
                    dns: r.dns,
                })
            }
            Layout::V1 => {
                let r: V1 = serde_json::from_value(json).map_err(|e| bad_result(what, e))?;
                Ok(CniResult {
                    interfaces: r.interfaces,
                    ips: r.ips,
                    routes: r.routes,
                    dns: r.dns,
                })
            }
        }
    }

    /// Parses JSON bytes (see [`CniResult::parse`]).
    pub fn parse_bytes(bytes: &[u8], fallback: Version, what: &str) -> Result<CniResult, CniError> {
        let json: Value = serde_json::from_slice(bytes).map_err(|e| bad_result(what, e))?;
        CniResult::parse(&json, fallback, what)
    }

    /// The result in `version`'s layout.
    pub fn render(&self, version: Version) -> Result<Value, CniError> {
        let cni_version = version.as_str().to_owned();
        let v11 = version >= Version::V1_1_0;
        let routes: Vec<Route> = if v11 {
            self.routes.clone()
        } else {
            self.routes.iter().map(Route::without_v11_fields).collect()
        };
        let interfaces: Vec<Interface> = if v11 {
            self.interfaces.clone()
        } else {
            self.interfaces
                .iter()
                .map(Interface::without_v11_fields)
                .collect()
        };
        let value = match version.layout() {
            Layout::Legacy => {
                let legacy = |v4: bool| {
                    self.ips
                        .iter()
                        .find(|ip| ip.address.is_ipv4() == v4)
                        .map(|ip| IpLegacy {
                            ip: ip.address,
                            gateway: ip.gateway,
                            routes: routes
                                .iter()
                                .filter(|r| r.dst.is_ipv4() == v4)
                                .cloned()
                                .collect(),
                        })
                };
                let r = Legacy {
                    cni_version,
                    ip4: legacy(true),
                    ip6: legacy(false),
                    dns: self.dns.clone(),
                };
                if r.ip4.is_none() && r.ip6.is_none() {
                    return Err(CniError::internal(format!(
                        "cannot convert the result to cniVersion {version}: it has no IP address"
                    )));
                }
                serde_json::to_value(r)
            }
            Layout::V03 => serde_json::to_value(V03 {
                cni_version,
                interfaces,
                ips: self
                    .ips
                    .iter()
                    .map(|ip| IpConfig04 {
                        version: if ip.address.is_ipv4() { "4" } else { "6" }.into(),
                        ip: ip.clone(),
                    })
                    .collect(),
                routes,
                dns: self.dns.clone(),
            }),
            Layout::V1 => serde_json::to_value(V1 {
                cni_version,
                interfaces,
                ips: self.ips.clone(),
                routes,
                dns: self.dns.clone(),
            }),
        };
        value.map_err(|e| CniError::internal(format!("cannot encode the result: {e}")))
    }
}

/// Converts a result (JSON) to `to`; the result's own `cniVersion` (or
/// `from` when it has none) says how to read it.
pub fn convert(json: &Value, from: Version, to: Version) -> Result<Value, CniError> {
    CniResult::parse(json, from, "the result")?.render(to)
}
