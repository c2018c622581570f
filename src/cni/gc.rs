//! GC (1.1.0+): release what belongs to attachments that are not in
//! `cni.dev/valid-attachments`.
//!
//! 1. Every saved configuration in `dataDir` of this network (same `name`)
//!    whose container is not valid: the delegate's DEL with it (no netns;
//!    the interface name from host-local's reservation, else `eth0`), then
//!    the file is removed (kept if the DEL failed, for the next GC).
//!    Unreadable files of invalid containers are removed.
//! 2. host-local's reservations, in the network's directory of every
//!    `ipam.dataDir` seen (this netconf's and the saved ones'), of
//!    containers not valid: removed. The reference host-local (1.1.x) has no
//!    GC, and leaked reservations exhaust the node's range (flannel#1416).
//!    Containers are matched by ID (the interface name is not compared).
//! 3. The delegate's own GC, if it speaks 1.1.0 (`VERSION`).
//!
//! Everything that can be done is done; errors are reported at the end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;

use super::commands::encode;
use super::conf::{host_local_dir, NetConf};
use super::delegate::{self, DelegateEnv};
use super::env::Checked;
use super::error::CniError;
use super::store;
use super::subnet_file::SubnetFile;
use super::version::Version;

/// Runs GC; see the module documentation.
pub fn gc(c: &Checked, conf: &NetConf) -> Result<(), CniError> {
    conf.version.require("GC", Version::V1_1_0)?;
    let attachments = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::config(
            "invalid network configuration: field `cni.dev/valid-attachments` is required for GC",
        )
    })?;
    let valid: HashSet<&str> = attachments
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    let mut errors = Vec::new();
    let mut dirs: Vec<PathBuf> = conf.host_local_dir().into_iter().collect();
    let mut ifnames: HashMap<String, String> = HashMap::new();
    let mut read_dirs: HashSet<PathBuf> = HashSet::new();

    let saved_ids = store::list(&conf.data_dir).unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    for id in saved_ids {
        if valid.contains(id.as_str()) {
            continue;
        }
        let saved = match store::load(&conf.data_dir, &id) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&saved) else {
            eprintln!(
                "weft-cni: GC: removing unreadable {}",
                conf.data_dir.join(&id).display()
            );
            if let Err(e) = store::remove(&conf.data_dir, &id) {
                errors.push(e);
            }
            continue;
        };
        if obj.get("name").and_then(Value::as_str) != Some(conf.name.as_str()) {
            continue; // another network's, sharing the dataDir
        }
        if let Some(dir) = host_local_dir(&conf.name, obj.get("ipam").and_then(Value::as_object)) {
            if read_dirs.insert(dir.clone()) {
                for r in store::reservations(&dir).unwrap_or_default() {
                    if !r.ifname.is_empty() {
                        ifnames.entry(r.container_id).or_insert(r.ifname);
                    }
                }
            }
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        let ifname = ifnames.get(&id).map_or("eth0", String::as_str);
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("bridge");
        let del = delegate::find(kind, &c.path).and_then(|plugin| {
            let env = DelegateEnv {
                command: "DEL".into(),
                container_id: Some(id.clone()),
                netns: None,
                ifname: Some(ifname.to_owned()),
                args: None,
                path: Some(c.path.clone()),
            };
            delegate::exec(&plugin, &env, &saved, c.delegate_timeout)
        });
        match del {
            Ok(_) => {
                eprintln!("weft-cni: GC: deleted stale attachment {id}");
                if let Err(e) = store::remove(&conf.data_dir, &id) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(CniError {
                msg: format!("GC: DEL of stale attachment {id} failed: {}", e.msg),
                ..e
            }),
        }
    }

    for dir in &dirs {
        match store::release_stale(dir, &valid) {
            Ok(released) => {
                for r in released {
                    eprintln!(
                        "weft-cni: GC: released {} of stale container {}",
                        r.ip, r.container_id
                    );
                }
            }
            Err(e) => errors.push(e),
        }
    }

    if let Err(e) = delegate_gc(c, conf) {
        errors.push(e);
    }

    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let details = errors
                .iter()
                .map(|e| format!("{} ({})", e.msg, e.code))
                .collect::<Vec<_>>()
                .join("; ");
            let first = errors.remove(0);
            Err(
                CniError::new(first.code, format!("GC: {n} errors, first: {}", first.msg))
                    .details(details),
            )
        }
    }
}

/// The delegate's GC, if it speaks 1.1.0, with the delegate configuration
/// generated now (skipped while the subnet file is not there).
fn delegate_gc(c: &Checked, conf: &NetConf) -> Result<(), CniError> {
    let plugin = delegate::find(&conf.delegate_type()?, &c.path)?;
    let versions = delegate::supported_versions(&plugin, &c.path, c.delegate_timeout)?;
    if !versions.iter().any(|v| v == Version::V1_1_0.as_str()) {
        return Ok(());
    }
    let subnet = match SubnetFile::load(&conf.subnet_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-cni: GC: not calling the delegate's GC: {}", e.msg);
            return Ok(());
        }
    };
    let mut config = conf.delegate_config(&subnet)?;
    config.insert("cniVersion".into(), Version::V1_1_0.as_str().into());
    let attachments =
        serde_json::to_value(conf.valid_attachments.as_deref().unwrap_or_default())
            .map_err(|e| CniError::internal(format!("cannot encode the attachments: {e}")))?;
    config.insert("cni.dev/valid-attachments".into(), attachments);
    let env = DelegateEnv {
        command: "GC".into(),
        path: Some(c.path.clone()),
        ..DelegateEnv::default()
    };
    delegate::exec(&plugin, &env, &encode(&config)?, c.delegate_timeout)?;
    Ok(())
}
