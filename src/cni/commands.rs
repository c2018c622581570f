//! ADD, DEL, CHECK and STATUS (GC is in [`super::gc`], VERSION in
//! [`super::version`]).

use serde_json::{Map, Value};

use super::conf::NetConf;
use super::delegate::{self, DelegateEnv};
use super::env::Checked;
use super::error::{code, CniError};
use super::result::CniResult;
use super::store;
use super::subnet_file::SubnetFile;
use super::types::Cidr;
use super::version::Version;

/// The delegate's `CNI_*` variables for `command`, from ours.
pub(super) fn delegate_env(c: &Checked, command: &str) -> DelegateEnv {
    DelegateEnv {
        command: command.into(),
        container_id: Some(c.container_id.clone()),
        netns: Some(c.netns.clone()),
        ifname: Some(c.ifname.clone()),
        args: Some(c.args.clone()),
        path: Some(c.path.clone()),
    }
}

pub(super) fn encode(value: &Map<String, Value>) -> Result<Vec<u8>, CniError> {
    serde_json::to_vec(value)
        .map_err(|e| CniError::internal(format!("cannot encode the delegate configuration: {e}")))
}

/// ADD: generate the delegate configuration, save it under
/// `<dataDir>/<containerID>`, run the delegate, print its result in the
/// requested version.
pub fn add(c: &Checked, conf: &NetConf) -> Result<String, CniError> {
    let subnet = SubnetFile::load(&conf.subnet_file)?;
    let config = conf.delegate_config(&subnet)?;
    let kind = conf.delegate_type()?;
    let plugin = delegate::find(&kind, &c.path)?;
    let bytes = encode(&config)?;
    // Saved (and synced) first, so a DEL can always undo whatever the
    // delegate did.
    store::save(&conf.data_dir, &c.container_id, &bytes)?;
    let added = delegate::exec(&plugin, &delegate_env(c, "ADD"), &bytes, c.delegate_timeout)
        .and_then(|out| {
            CniResult::parse_bytes(
                &out,
                conf.version.for_delegate(),
                &format!("the result of delegate {kind}"),
            )
        })
        .and_then(|result| Ok(result.render(conf.version)?.to_string()));
    match added {
        Ok(out) => Ok(out),
        Err(e) => {
            undo_add(c, conf, &plugin, &bytes);
            Err(e)
        }
    }
}

/// After a failed ADD: the delegate's DEL with the same configuration
/// (releasing an address or an interface it may have made), then the saved
/// file goes, so nothing of the attempt is left for a DEL that may never
/// come. If that DEL fails, the file stays, so the runtime's DEL (or GC)
/// can still undo the attempt. Failures here are only reported on stderr:
/// the ADD's error is the one that matters.
fn undo_add(c: &Checked, conf: &NetConf, plugin: &std::path::Path, bytes: &[u8]) {
    if let Err(e) = delegate::exec(plugin, &delegate_env(c, "DEL"), bytes, c.delegate_timeout) {
        eprintln!(
            "weft-cni: undoing the failed ADD: delegate DEL failed ({e}); keeping {} for a later DEL",
            conf.data_dir.join(&c.container_id).display()
        );
        return;
    }
    if let Err(e) = store::remove(&conf.data_dir, &c.container_id) {
        eprintln!("weft-cni: undoing the failed ADD: {e}");
    }
}

/// DEL: run the delegate with the saved configuration; nothing saved means
/// nothing to do. The saved file is removed only when the delegate
/// succeeded, so a failed DEL can be retried.
pub fn del(c: &Checked, conf: &NetConf) -> Result<(), CniError> {
    let Some(saved) = store::load(&conf.data_dir, &c.container_id)? else {
        return Ok(());
    };
    let kind = serde_json::from_slice::<Value>(&saved)
        .ok()
        .and_then(|v| Some(v.get("type")?.as_str()?.to_owned()));
    let Some(kind) = kind else {
        // As flannel: the interface stays (until the netns goes); GC removes the file.
        eprintln!(
            "weft-cni: {} is not a delegate configuration; nothing to delete",
            conf.data_dir.join(&c.container_id).display()
        );
        return Ok(());
    };
    let plugin = delegate::find(&kind, &c.path)?;
    delegate::exec(&plugin, &delegate_env(c, "DEL"), &saved, c.delegate_timeout)?;
    store::remove(&conf.data_dir, &c.container_id)
}

/// CHECK (0.4.0+): the container must have been added (its saved
/// configuration exists, else error 3), `prevResult` must be given, the
/// subnet file must be valid and still hold the subnet the container got
/// its address from (else error 101), and the delegate's CHECK with the
/// saved configuration and `prevResult` must pass.
pub fn check(c: &Checked, conf: &NetConf) -> Result<(), CniError> {
    conf.version.require("CHECK", Version::V0_4_0)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::config("invalid network configuration: field `prevResult` is required for CHECK")
    })?;
    let path = conf.data_dir.join(&c.container_id);
    let saved = store::load(&conf.data_dir, &c.container_id)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {} is unknown: no saved configuration {}",
                c.container_id,
                path.display()
            ),
        )
    })?;
    let Ok(Value::Object(mut saved)) = serde_json::from_slice::<Value>(&saved) else {
        return Err(CniError::internal(format!(
            "{} is not a delegate configuration",
            path.display()
        )));
    };
    let subnet = SubnetFile::load(&conf.subnet_file)?;
    let mut had = saved_subnets(&saved);
    let mut has = subnet.subnets();
    had.sort();
    has.sort();
    if had != has {
        return Err(CniError::new(
            code::SUBNET_CHANGED,
            format!(
                "the node's subnet changed: the container was added in [{}], {} now says [{}]",
                list(&had),
                conf.subnet_file.display(),
                list(&has)
            ),
        ));
    }
    let kind = saved
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_owned();
    let version = conf.version.for_delegate();
    saved.insert("cniVersion".into(), version.as_str().into());
    let mut prev = CniResult::parse(prev, conf.version, "prevResult")?;
    fill_route_gateways(&mut prev);
    saved.insert("prevResult".into(), prev.render(version)?);
    let plugin = delegate::find(&kind, &c.path)?;
    delegate::exec(
        &plugin,
        &delegate_env(c, "CHECK"),
        &encode(&saved)?,
        c.delegate_timeout,
    )?;
    Ok(())
}

/// Gives each route without `gw` the gateway of the first address of its
/// family that has one: what the bridge plugin programs (and what the
/// kernel shows), while its CHECK compares the result's routes literally —
/// without this, CHECK of the reference bridge (1.1.x) fails on host-local's
/// cluster route (`{"dst": "10.244.0.0/16"}`).
pub fn fill_route_gateways(result: &mut CniResult) {
    let gateway = |v4: bool| {
        result
            .ips
            .iter()
            .filter(|ip| ip.address.is_ipv4() == v4)
            .find_map(|ip| ip.gateway)
    };
    let (v4, v6) = (gateway(true), gateway(false));
    for route in &mut result.routes {
        if route.gw.is_none() {
            route.gw = if route.dst.is_ipv4() { v4 } else { v6 };
        }
    }
}

/// The subnets in a saved configuration's `ipam.ranges`.
fn saved_subnets(saved: &Map<String, Value>) -> Vec<Cidr> {
    let ranges = saved
        .get("ipam")
        .and_then(|i| i.get("ranges"))
        .and_then(Value::as_array);
    ranges
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|r| r.get("subnet")?.as_str()?.parse::<Cidr>().ok())
        .map(|c| c.network())
        .collect()
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// STATUS (1.1.0+): not available (error 50) while the subnet file is
/// missing or invalid, or when the delegate or IPAM plugin is not in
/// `CNI_PATH`; a delegate that speaks 1.1.0 is asked too.
pub fn status(c: &Checked, conf: &NetConf) -> Result<(), CniError> {
    conf.version.require("STATUS", Version::V1_1_0)?;
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg).details(e.details);
    let subnet = SubnetFile::load(&conf.subnet_file).map_err(unavailable)?;
    if c.path.is_empty() {
        return Ok(());
    }
    let plugin = delegate::find(&conf.delegate_type()?, &c.path).map_err(unavailable)?;
    delegate::find(&conf.ipam_type()?, &c.path).map_err(unavailable)?;
    let versions = delegate::supported_versions(&plugin, &c.path, c.delegate_timeout)?;
    if !versions.iter().any(|v| v == Version::V1_1_0.as_str()) {
        return Ok(());
    }
    let mut config = conf.delegate_config(&subnet)?;
    config.insert("cniVersion".into(), Version::V1_1_0.as_str().into());
    let env = DelegateEnv {
        command: "STATUS".into(),
        path: Some(c.path.clone()),
        ..DelegateEnv::default()
    };
    delegate::exec(&plugin, &env, &encode(&config)?, c.delegate_timeout)?;
    Ok(())
}
