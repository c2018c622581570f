//! The plugin's network configuration (flannel's fields) and the delegate
//! configuration generated from it and the subnet file.
//!
//! Netconf fields: `cniVersion`, `name`, `type`, `subnetFile` (default
//! `/run/flannel/subnet.env`), `dataDir` (default `/var/lib/cni/flannel`),
//! `delegate` (object), `ipam` (object), `runtimeConfig` (object),
//! `prevResult` (CHECK) and `cni.dev/valid-attachments` (GC). Other fields
//! (`args`, `capabilities`, …) are ignored, as flannel does.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::env::is_safe_name;
use super::error::{code, CniError};
use super::subnet_file::SubnetFile;
use super::types::{Attachment, Cidr};
use super::version::Version;

/// Default `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default `dataDir`: where the delegate configuration of each container is kept.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// host-local's state directory when `ipam.dataDir` is not set.
pub const DEFAULT_HOST_LOCAL_DIR: &str = "/var/lib/cni/networks";

/// The largest netconf accepted on stdin.
pub const MAX_STDIN: usize = 1 << 20;

/// weft-cni's network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` (absent: 0.1.0).
    pub version: Version,
    /// `name`: the network name (required; `[A-Za-z0-9][A-Za-z0-9_.-]*`).
    pub name: String,
    /// `subnetFile`.
    pub subnet_file: PathBuf,
    /// `dataDir`.
    pub data_dir: PathBuf,
    /// `delegate`.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`.
    pub runtime_config: Option<Map<String, Value>>,
    /// `prevResult`.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `cniVersion` of a netconf if it is one weft-cni supports (errors are
/// tagged with it); `None` otherwise.
pub fn peek_version(stdin: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?)
}

fn field_error(field: &str, what: &str) -> CniError {
    CniError::config(format!(
        "invalid network configuration: field `{field}` {what}"
    ))
}

fn opt_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_error(field, "must be a string")),
    }
}

fn opt_obj(obj: &Map<String, Value>, field: &str) -> Result<Option<Map<String, Value>>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(field_error(field, "must be an object")),
    }
}

impl NetConf {
    /// Parses the netconf: malformed JSON or not an object is error 6, an
    /// unsupported `cniVersion` 1, a field of the wrong type or an invalid
    /// `name` 7 (the message names the field).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        if stdin.len() > MAX_STDIN {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                format!("the network configuration is larger than {MAX_STDIN} bytes"),
            ));
        }
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("cannot decode the network configuration: {e}"),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                "the network configuration is not a JSON object",
            ));
        };
        let version = Version::from_config(opt_str(&obj, "cniVersion")?)?;
        let name = opt_str(&obj, "name")?.unwrap_or("");
        if name.is_empty() {
            return Err(field_error("name", "is required"));
        }
        if !is_safe_name(name) || name.len() > 255 {
            return Err(field_error(
                "name",
                "must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 255 characters)",
            ));
        }
        opt_str(&obj, "type")?;
        let path = |field: &str, default: &str| -> Result<PathBuf, CniError> {
            match opt_str(&obj, field)? {
                Some("") => Err(field_error(field, "must not be empty")),
                Some(p) if p.contains('\0') => Err(field_error(field, "must not contain NUL")),
                // A relative path would depend on the runtime's working
                // directory, so a DEL from elsewhere would find nothing.
                Some(p) if !p.starts_with('/') => Err(field_error(
                    field,
                    &format!("must be an absolute path, not {p:?}"),
                )),
                Some(p) => Ok(PathBuf::from(p)),
                None => Ok(PathBuf::from(default)),
            }
        };
        let valid_attachments = match obj
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
                field_error(
                    "cni.dev/valid-attachments",
                    "must be a list of {\"containerID\": string, \"ifname\": string}",
                )
            })?),
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(field_error("prevResult", "must be an object")),
        };
        let ipam = opt_obj(&obj, "ipam")?;
        if let Some(ipam) = &ipam {
            match ipam.get("dataDir") {
                None | Some(Value::Null) => {}
                Some(Value::String(d)) if d.starts_with('/') => {}
                Some(Value::String(d)) => {
                    return Err(field_error(
                        "ipam.dataDir",
                        &format!("must be an absolute path, not {d:?}"),
                    ))
                }
                Some(_) => return Err(field_error("ipam.dataDir", "must be a string")),
            }
        }
        Ok(NetConf {
            version,
            name: name.to_owned(),
            subnet_file: path("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: path("dataDir", DEFAULT_DATA_DIR)?,
            delegate: opt_obj(&obj, "delegate")?,
            ipam,
            runtime_config: opt_obj(&obj, "runtimeConfig")?,
            prev_result,
            valid_attachments,
        })
    }

    /// The delegate's plugin type (`delegate.type`, default `bridge`),
    /// checked as flannel does, and to be a plain file name.
    pub fn delegate_type(&self) -> Result<String, CniError> {
        let t = match &self.delegate {
            Some(d) => match d.get("type") {
                None => "bridge",
                Some(Value::String(s)) => s,
                Some(_) => {
                    return Err(field_error(
                        "delegate.type",
                        "must be a string: the 'delegate' dictionary, if present, must have a (string) 'type' field",
                    ))
                }
            },
            None => "bridge",
        };
        check_plugin_name("delegate.type", t)?;
        Ok(t.to_owned())
    }

    /// The IPAM plugin's type (`ipam.type`, default `host-local`).
    pub fn ipam_type(&self) -> Result<String, CniError> {
        let t = match &self.ipam {
            Some(ipam) => {
                opt_str(ipam, "type").map_err(|_| field_error("ipam.type", "must be a string"))?
            }
            None => None,
        }
        .unwrap_or("host-local");
        check_plugin_name("ipam.type", t)?;
        Ok(t.to_owned())
    }

    /// host-local's directory for this network (`<ipam.dataDir>/<name>`),
    /// when the IPAM plugin is host-local.
    pub fn host_local_dir(&self) -> Option<PathBuf> {
        host_local_dir(&self.name, self.ipam.as_ref())
    }

    /// The delegate configuration, as flannel's plugin builds it: the
    /// `delegate` object (which must not have `name` or `ipam`) with `name`,
    /// `type` (default `bridge`), `ipMasq` (default `!FLANNEL_IPMASQ`),
    /// `mtu` (default `FLANNEL_MTU`), `isGateway: true` for a bridge (if
    /// absent), `cniVersion` (the delegate's: see
    /// [`Version::for_delegate`]), `runtimeConfig`, and `ipam`: the `ipam`
    /// object with `type` (default `host-local`), `ranges` = one range per
    /// address family of the subnet file (`[[{"subnet": v4}], [{"subnet":
    /// v6}]]`, IPv4 first, either alone on a single-family node) and
    /// `routes` = the given routes + one per cluster network, IPv4 first
    /// (not repeated if given). The bridge's `isDefaultGateway` then adds a
    /// default route per family.
    pub fn delegate_config(&self, subnet: &SubnetFile) -> Result<Map<String, Value>, CniError> {
        let mut d = self.delegate.clone().unwrap_or_default();
        let kind = self.delegate_type()?;
        for field in ["name", "ipam"] {
            if d.contains_key(field) {
                return Err(field_error(
                    &format!("delegate.{field}"),
                    &format!("must not be set: the 'delegate' dictionary must not have '{field}' field, it'll be set by weft"),
                ));
            }
        }
        if let Some(rc) = &self.runtime_config {
            d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
        }
        d.insert("name".into(), self.name.clone().into());
        d.insert("type".into(), kind.clone().into());
        d.entry("ipMasq").or_insert((!subnet.ipmasq).into());
        d.entry("mtu").or_insert(subnet.mtu.into());
        if kind == "bridge" {
            d.entry("isGateway").or_insert(true.into());
        }
        d.insert(
            "cniVersion".into(),
            self.version.for_delegate().as_str().into(),
        );

        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.insert("type".into(), self.ipam_type()?.into());
        let ranges: Vec<Value> = subnet
            .subnets()
            .iter()
            .map(|s| serde_json::json!([{ "subnet": s.to_string() }]))
            .collect();
        ipam.insert("ranges".into(), ranges.into());
        let mut routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(field_error("ipam.routes", "must be a list of routes")),
        };
        let mut given = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let dst = route
                .get("dst")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Cidr>().ok())
                .ok_or_else(|| {
                    field_error(
                        &format!("ipam.routes[{i}]"),
                        "must be an object with a CIDR `dst`",
                    )
                })?;
            given.push(dst);
        }
        for nw in subnet.all_networks() {
            if !given.contains(&nw) {
                routes.push(serde_json::json!({ "dst": nw.to_string() }));
            }
        }
        ipam.insert("routes".into(), routes.into());
        d.insert("ipam".into(), Value::Object(ipam));
        Ok(d)
    }
}

/// host-local's directory for network `name` given a delegate's `ipam`
/// object: `<ipam.dataDir or /var/lib/cni/networks>/<name>`; `None` unless
/// the IPAM plugin is host-local and the name is a safe file name.
pub fn host_local_dir(name: &str, ipam: Option<&Map<String, Value>>) -> Option<PathBuf> {
    let kind = ipam
        .and_then(|i| i.get("type"))
        .map_or(Some("host-local"), Value::as_str)?;
    if kind != "host-local" || !is_safe_name(name) {
        return None;
    }
    let base = match ipam.and_then(|i| i.get("dataDir")) {
        None | Some(Value::Null) => DEFAULT_HOST_LOCAL_DIR,
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return None,
    };
    Some(PathBuf::from(base).join(name))
}

/// A plugin type names an executable in `CNI_PATH`: a plain file name.
pub fn check_plugin_name(field: &str, name: &str) -> Result<(), CniError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(field_error(
            field,
            &format!("{name:?} is not a plugin name"),
        ));
    }
    Ok(())
}
