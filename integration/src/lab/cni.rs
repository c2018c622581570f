//! Running CNI plugins on a lab node as a container runtime does, and
//! saving a delegate configuration as flannel's CNI plugin does.

use std::net::IpAddr;
use std::path::Path;

use anyhow::bail;
use serde_json::Value;
use weft_netns::Netns;

use crate::cni_call::{flannel_netconf, CniCall};

/// The network configuration the runtime hands the `flannel` plugin on a
/// node whose files are under `base`: flannel's conflist entry, with the
/// node's subnet file and state directories.
pub(super) fn pod_conf(base: &Path) -> Value {
    flannel_netconf(
        "0.3.1",
        &base.join("subnet.env"),
        &base.join("cni-flannel"),
        &base.join("cni-ipam"),
    )
}

/// Writes `dir/name` readable by its owner only (dir 0700), synced.
pub(super) fn save_private(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(name))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Runs the CNI plugin `plugin` from `bin` in `node` for container `id` in `pod`.
pub(super) fn cni(
    node: &Netns,
    bin: &Path,
    plugin: &str,
    command: &str,
    id: &str,
    pod: &Netns,
    conf: &Value,
) -> anyhow::Result<Value> {
    let plugin = bin.join(plugin).to_string_lossy().to_string();
    let netns = pod.path().to_string_lossy().to_string();
    let call = CniCall {
        command,
        id,
        netns: &netns,
        ifname: "eth0",
        cni_path: bin,
    };
    let out = call.run(
        node.command(&[plugin.as_str()]),
        conf.to_string().as_bytes(),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "CNI {command} for {id} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}

/// The addresses of a CNI result in its order (0.3.x/0.4.0/1.x `ips`, or
/// 0.1.0/0.2.0 `ip4` and `ip6`).
pub(super) fn result_ips(r: &Value) -> Vec<IpAddr> {
    let cidrs: Vec<&str> = match r["ips"].as_array() {
        Some(ips) => ips.iter().filter_map(|i| i["address"].as_str()).collect(),
        None => [&r["ip4"]["ip"], &r["ip6"]["ip"]]
            .into_iter()
            .filter_map(Value::as_str)
            .collect(),
    };
    cidrs
        .into_iter()
        .filter_map(|c| c.split('/').next()?.parse().ok())
        .collect()
}
