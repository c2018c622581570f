//! The CNI section of `just bench`: ADD+DEL cycles through `weft-cni`
//! against the same delegate configuration (the one weft-cni generated and
//! saved) fed straight to the reference `bridge` plugin
//! (`/usr/lib/cni/bridge`, Debian's containernetworking-plugins).
//!
//! Each side has its own fresh "host" and "pod" namespaces and host-local
//! directory; cycles alternate between the sides; every plugin process is
//! started from a thread inside the host namespace (no `ip netns exec` is
//! counted). One warm-up cycle per side (it creates the `cni0` bridge) is
//! not counted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use weft_netns::Netns;

use crate::bench::{ms, Samples};
use crate::cni_call::CniCall;

/// Where Debian puts the reference plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// One side: its namespaces, the program it runs and that program's stdin.
struct Side {
    host: Netns,
    pod: Netns,
    program: String,
    stdin: Vec<u8>,
    add: Samples,
    del: Samples,
}

impl Side {
    fn new(role: &str, program: &Path, stdin: Vec<u8>) -> anyhow::Result<Side> {
        Ok(Side {
            host: Netns::new(&format!("bcni-{role}-host"))?,
            pod: Netns::new(&format!("bcni-{role}-pod"))?,
            program: program
                .to_str()
                .context("the plugin path is not UTF-8")?
                .to_owned(),
            stdin,
            add: Samples::default(),
            del: Samples::default(),
        })
    }

    /// One ADD then DEL of container `id`, timed from inside the host
    /// namespace; returns the ADD's result.
    fn cycle(&mut self, id: &str, counted: bool) -> anyhow::Result<Value> {
        let (program, stdin) = (self.program.clone(), self.stdin.clone());
        let (netns, id) = (self.pod.path().display().to_string(), id.to_owned());
        let (result, add, del) = self.host.run(move || async move {
            let (out, add) = invoke(&program, "ADD", &id, &netns, &stdin)?;
            let (_, del) = invoke(&program, "DEL", &id, &netns, &stdin)?;
            let result: Value = serde_json::from_slice(&out).context("ADD printed no JSON")?;
            anyhow::Ok((result, add, del))
        })??;
        if result["ips"][0]["address"].as_str().is_none() {
            bail!("{}: ADD gave no address: {result}", self.program);
        }
        if counted {
            self.add.push(add);
            self.del.push(del);
        }
        Ok(result)
    }

    fn cycle_median(&self) -> Duration {
        let mut sums = Samples::default();
        for (a, d) in self.add.0.iter().zip(&self.del.0) {
            sums.push(*a + *d);
        }
        sums.median()
    }
}

/// Runs one plugin command in the calling thread's namespace; its stdout
/// and how long it took (spawn to exit).
fn invoke(
    program: &str,
    command: &str,
    id: &str,
    netns: &str,
    stdin: &[u8],
) -> anyhow::Result<(Vec<u8>, Duration)> {
    let t0 = Instant::now();
    let call = CniCall {
        command,
        id,
        netns,
        ifname: "eth0",
        cni_path: Path::new(CNI_PATH),
    };
    let out = call
        .run(Command::new(program), stdin)
        .with_context(|| format!("cannot run {program}"))?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{program} {command} failed: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((out.stdout, took))
}

/// Prints the CNI section: `cycles` counted ADD+DEL cycles per side.
pub fn run(weft_cni: &Path, cycles: usize) -> anyhow::Result<()> {
    if !weft_cni.is_file() {
        bail!(
            "{} not found (cargo build --release -p weft --bin weft-cni)",
            weft_cni.display()
        );
    }
    let bridge = Path::new(CNI_PATH).join("bridge");
    if !bridge.is_file() {
        bail!(
            "{} not found (apt-get install containernetworking-plugins)",
            bridge.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    std::fs::write(root.join("subnet.env"), SUBNET_ENV)?;
    // kube-flannel.yml's conflist entry, with private directories.
    let netconf = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
        "subnetFile": root.join("subnet.env"), "dataDir": root.join("weft-data"),
        "ipam": {"dataDir": root.join("weft-ipam")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true}
    });
    let mut weft = Side::new("weft", weft_cni, serde_json::to_vec(&netconf)?)?;
    weft.cycle("warmup", false)?;
    // The configuration weft-cni generated (kept from a second, un-DELed ADD).
    let saved = {
        let stdin = weft.stdin.clone();
        let (program, netns) = (weft.program.clone(), weft.pod.path().display().to_string());
        weft.host.run(move || async move {
            invoke(&program, "ADD", "probe", &netns, &stdin)?;
            let saved = std::fs::read(root_of(&stdin)?.join("probe"))?;
            invoke(&program, "DEL", "probe", &netns, &stdin)?;
            anyhow::Ok(saved)
        })??
    };
    let mut delegate: Value =
        serde_json::from_slice(&saved).context("weft-cni's saved configuration")?;
    delegate["ipam"]["dataDir"] = json!(root.join("bridge-ipam"));
    let mut reference = Side::new("ref", &bridge, serde_json::to_vec(&delegate)?)?;
    reference.cycle("warmup", false)?;

    for i in 0..cycles.max(1) {
        let id = format!("bench-{i}");
        weft.cycle(&id, true)?;
        reference.cycle(&id, true)?;
    }
    for side in ["weft-ipam", "bridge-ipam"] {
        let left = std::fs::read_dir(root.join(side).join("cbr0"))?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .count();
        if left != 0 {
            bail!("{side}: {left} addresses still reserved after the DELs");
        }
    }

    let startup = process_cost(&weft, cycles.max(1))?;
    let ratio = weft.cycle_median().as_secs_f64() / reference.cycle_median().as_secs_f64();
    println!(
        "cni: ADD+DEL through weft-cni vs {} with the same configuration (median of {} cycles each, alternating, fresh namespaces)",
        bridge.display(),
        weft.add.0.len()
    );
    for (name, side) in [("weft-cni", &weft), ("bridge", &reference)] {
        println!(
            "  {name:<9} ADD {:>8}  DEL {:>8}  ADD+DEL {:>8}",
            ms(side.add.median()),
            ms(side.del.median()),
            ms(side.cycle_median())
        );
    }
    println!(
        "  ratio weft-cni/bridge {ratio:.2}x   (goal <= 1.1x: {})",
        if ratio <= 1.1 { "ok" } else { "MISSED" }
    );
    println!(
        "  weft-cni's cost per ADD+DEL: +{}; of it, starting and ending one weft-cni process (VERSION): {} per call",
        ms(weft.cycle_median().saturating_sub(reference.cycle_median())),
        ms(startup)
    );
    println!("  (ADD = read subnet.env, generate, save + fsync, run bridge, convert the result; DEL = read the saved file, run bridge, remove it)");
    Ok(())
}

/// Median time to run `weft-cni` with `CNI_COMMAND=VERSION` (a process
/// that starts, prints and exits) from inside the side's host namespace.
fn process_cost(side: &Side, runs: usize) -> anyhow::Result<Duration> {
    let program = side.program.clone();
    side.host.run(move || async move {
        let mut samples = Samples::default();
        for _ in 0..runs {
            let t0 = Instant::now();
            let out = Command::new(&program)
                .env("CNI_COMMAND", "VERSION")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()?;
            samples.push(t0.elapsed());
            if !out.status.success() {
                bail!("{program} VERSION failed");
            }
        }
        anyhow::Ok(samples.median())
    })?
}

/// The `dataDir` of a weft-cni netconf.
fn root_of(netconf: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    let v: Value = serde_json::from_slice(netconf)?;
    Ok(v["dataDir"].as_str().context("no dataDir")?.into())
}
