//! weft-cni with Debian's reference plugins (`/usr/lib/cni`, package
//! containernetworking-plugins) in network namespaces: a "host" namespace
//! where the plugin runs (`ip netns exec <host> weft-cni`) and "pod"
//! namespaces given as `CNI_NETNS`. host-local's state and weft-cni's
//! `dataDir` live in a temporary directory. Needs root; skipped otherwise.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use weft::cni::error::code;
use weft_integration::cni_call::{flannel_netconf, CniCall};
use weft_netns::{require_netns, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");
const CNI_PATH: &str = "/usr/lib/cni";
const SEED_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const GATEWAY: &str = "10.244.1.1";

/// A node: its "host" namespace and a scratch directory with the subnet
/// file, weft-cni's dataDir and host-local's dataDir.
struct Node {
    host: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), SEED_ENV).unwrap();
        Node {
            host: Netns::new("cni-host").unwrap(),
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// kube-flannel.yml's conflist entry, with private paths.
    fn netconf(&self, version: &str) -> Value {
        let root = self.root();
        flannel_netconf(
            version,
            &root.join("subnet.env"),
            &root.join("data"),
            &root.join("ipam"),
        )
    }

    fn ipam_dir(&self) -> PathBuf {
        self.root().join("ipam/cbr0")
    }

    /// Runs weft-cni in the host namespace; (stdout as JSON, success).
    fn cni(&self, command: &str, id: &str, pod: Option<&Netns>, conf: &Value) -> (Value, bool) {
        let netns = pod
            .map(|p| p.path().display().to_string())
            .unwrap_or_default();
        let call = CniCall {
            command,
            id,
            netns: &netns,
            ifname: "eth0",
            cni_path: Path::new(CNI_PATH),
        };
        let out = call
            .run(self.host.command(&[BIN]), conf.to_string().as_bytes())
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if !out.status.success() {
            eprintln!("{command} {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        (value, out.status.success())
    }

    /// host-local's reservations: (ip, container ID).
    fn reservations(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(|e| {
                let e = e.unwrap();
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let content = std::fs::read_to_string(e.path()).unwrap();
                Some((ip, content.lines().next().unwrap_or("").trim().to_owned()))
            })
            .collect();
        out.sort();
        out
    }

    fn saved(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root().join("data")) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        out
    }
}

/// The pod's IPv4 address on eth0 and its routes, from the kernel.
fn pod_state(pod: &Netns) -> (String, Vec<(String, String)>) {
    let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]).unwrap();
    let info = &addrs[0]["addr_info"][0];
    let addr = format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"]);
    let routes = pod.ip_json(&["-4", "route", "show"]).unwrap();
    let routes = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["gateway"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (addr, routes)
}

fn in_node_subnet(address: &str) -> bool {
    let (ip, prefix) = address.split_once('/').unwrap();
    let ip: Ipv4Addr = ip.parse().unwrap();
    let o = ip.octets();
    prefix == "24" && o[..3] == [10, 244, 1] && o[3] > 1 && o[3] < 255
}

#[test]
fn add_check_del_in_each_version() {
    require_netns!();
    let node = Node::new();
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("cni-pod").unwrap();
        let id = format!("ctr{i}");
        let conf = node.netconf(v);
        let (result, ok) = node.cni("ADD", &id, Some(&pod), &conf);
        assert!(ok, "{v}: {result}");
        assert_eq!(result["cniVersion"], v);
        let ip = &result["ips"][0];
        let address = ip["address"].as_str().unwrap();
        assert!(in_node_subnet(address), "{v}: {address}");
        assert_eq!(ip["gateway"], GATEWAY);
        assert_eq!(
            ip.get("version").is_some(),
            v.starts_with("0."),
            "{v}: {ip}"
        );
        let eth0 = &result["interfaces"][ip["interface"].as_u64().unwrap() as usize];
        assert_eq!(eth0["name"], "eth0");
        assert_eq!(eth0["sandbox"], pod.path().display().to_string());

        // The kernel agrees: address, default route via the bridge, cluster route.
        let (addr, routes) = pod_state(&pod);
        assert_eq!(addr, address);
        assert!(
            routes.contains(&("default".into(), GATEWAY.into())),
            "{routes:?}"
        );
        assert!(
            routes.contains(&("10.244.0.0/16".into(), GATEWAY.into())),
            "{routes:?}"
        );
        let bridge = node
            .host
            .ip_json(&["-4", "addr", "show", "dev", "cni0"])
            .unwrap();
        assert_eq!(bridge[0]["addr_info"][0]["local"], GATEWAY);
        assert_eq!(bridge[0]["mtu"], 1450);
        pod.exec(&["ping", "-c1", "-W2", GATEWAY]).unwrap();
        assert_eq!(node.saved(), std::slice::from_ref(&id));

        // CHECK (0.4.0+; 0.3.1 has none).
        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        let (out, ok) = node.cni("CHECK", &id, Some(&pod), &check);
        if v == "0.3.1" {
            assert_eq!(out["code"], code::INCOMPATIBLE_VERSION);
        } else {
            assert!(ok, "{v}: CHECK: {out}");
        }
        if v == "1.1.0" {
            // CHECK is not a no-op: a lost cluster route is reported.
            pod.ip(&["route", "del", "10.244.0.0/16"]).unwrap();
            let (out, ok) = node.cni("CHECK", &id, Some(&pod), &check);
            assert!(
                !ok && out["msg"].as_str().unwrap().contains("10.244.0.0"),
                "{out}"
            );
        }

        // DEL, twice.
        for _ in 0..2 {
            let (out, ok) = node.cni("DEL", &id, Some(&pod), &conf);
            assert!(ok, "{v}: DEL: {out}");
        }
        assert!(pod.ip(&["link", "show", "eth0"]).is_err(), "eth0 is gone");
        assert!(node.saved().is_empty());
        assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    }
}

#[test]
fn gc_removes_a_leaked_attachment_and_its_reservation() {
    require_netns!();
    let node = Node::new();
    let conf = node.netconf("1.1.0");
    let keep = Netns::new("cni-keep").unwrap();
    let (kept, ok) = node.cni("ADD", "keep", Some(&keep), &conf);
    assert!(ok, "{kept}");
    let leak = Netns::new("cni-leak").unwrap();
    let (leaked, ok) = node.cni("ADD", "leak", Some(&leak), &conf);
    assert!(ok, "{leaked}");
    // The pod goes away without a DEL; and a reservation whose saved file
    // is gone too (flannel#1416).
    drop(leak);
    std::fs::write(node.ipam_dir().join("10.244.1.200"), "ghost\r\neth0").unwrap();
    assert_eq!(node.reservations().len(), 3);
    assert_eq!(node.saved(), ["keep", "leak"]);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let (out, ok) = node.cni("GC", "", None, &gc);
    assert!(ok, "GC: {out}");
    assert_eq!(node.saved(), ["keep"]);
    let kept_ip: Ipv4Addr = kept["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(node.reservations(), [(kept_ip, "keep".to_owned())]);
    // The kept pod still works; its DEL still works.
    keep.exec(&["ping", "-c1", "-W2", GATEWAY]).unwrap();
    assert!(node.cni("DEL", "keep", Some(&keep), &conf).1);
    assert!(node.reservations().is_empty());
}

#[test]
fn status_with_and_without_the_subnet_file() {
    require_netns!();
    let node = Node::new();
    let conf = node.netconf("1.1.0");
    let (out, ok) = node.cni("STATUS", "", None, &conf);
    assert!(ok && out.is_null(), "{out}");
    std::fs::remove_file(node.root().join("subnet.env")).unwrap();
    let (out, ok) = node.cni("STATUS", "", None, &conf);
    assert!(!ok);
    assert_eq!(out["code"], code::NOT_AVAILABLE);
    assert!(
        out["msg"].as_str().unwrap().contains("does not exist"),
        "{out}"
    );
    // And ADD says "try again later" meanwhile.
    let pod = Netns::new("cni-pod").unwrap();
    assert_eq!(
        node.cni("ADD", "c1", Some(&pod), &conf).0["code"],
        code::TRY_AGAIN_LATER
    );
    std::fs::write(node.root().join("subnet.env"), SEED_ENV).unwrap();
    assert!(node.cni("STATUS", "", None, &conf).1);
    assert!(node.cni("ADD", "c1", Some(&pod), &conf).1);
    assert!(node.cni("DEL", "c1", Some(&pod), &conf).1);
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses() {
    require_netns!();
    let node = Node::new();
    let conf = node.netconf("1.0.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("cni-many").unwrap()).collect();
    let run_all = |command: &'static str| -> Vec<(Value, bool)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    let (node, conf) = (&node, &conf);
                    s.spawn(move || node.cni(command, &format!("c{i}"), Some(pod), conf))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let added = run_all("ADD");
    let mut ips: Vec<String> = added
        .iter()
        .map(|(r, ok)| {
            assert!(ok, "{r}");
            r["ips"][0]["address"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(ips.iter().all(|ip| in_node_subnet(ip)), "{ips:?}");
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "distinct addresses");
    assert_eq!(node.reservations().len(), 50);
    assert!(run_all("DEL").iter().all(|(_, ok)| *ok));
    assert!(node.reservations().is_empty());
    assert!(node.saved().is_empty());
}

#[test]
fn path_traversal_container_id_is_rejected_and_nothing_is_written() {
    require_netns!();
    let node = Node::new();
    let pod = Netns::new("cni-pod").unwrap();
    let before = std::fs::read_dir(node.root()).unwrap().count();
    let outside = node.root().parent().unwrap().join("weft-cni-escape");
    let escape = format!("../{}", outside.file_name().unwrap().to_str().unwrap());
    for id in [
        escape.as_str(),
        "../../../../tmp/x",
        "/etc/passwd",
        "..",
        "a/b",
    ] {
        let (out, ok) = node.cni("ADD", id, Some(&pod), &node.netconf("1.0.0"));
        assert!(!ok);
        assert_eq!(out["code"], code::INVALID_ENVIRONMENT, "{id}: {out}");
        let (out, ok) = node.cni("DEL", id, Some(&pod), &node.netconf("1.0.0"));
        assert!(
            !ok && out["code"] == code::INVALID_ENVIRONMENT,
            "{id}: {out}"
        );
    }
    assert!(!outside.exists());
    assert!(
        !node.root().join("data").exists(),
        "dataDir not even created"
    );
    assert_eq!(std::fs::read_dir(node.root()).unwrap().count(), before);
    let links = node.host.ip_json(&["link", "show"]).unwrap();
    assert_eq!(
        links.as_array().unwrap().len(),
        1,
        "only lo: no delegate ran"
    );
}

/// (b) The bridge plugin refuses the pod after host-local reserved its
/// address (cni0 already carries an address of another subnet, flannel's
/// classic "cni0 already has an IP address different from …"): the failed
/// ADD leaves no reservation and no saved file behind, and the runtime's
/// follow-up DEL succeeds.
#[test]
fn a_failed_add_leaves_nothing_behind() {
    require_netns!();
    let node = Node::new();
    node.host.add_bridge("cni0").unwrap();
    node.host.add_addr("cni0", "10.99.0.1/24").unwrap();
    let pod = Netns::new("cni-pod").unwrap();
    let conf = node.netconf("1.0.0");
    for attempt in 0..3 {
        let id = format!("refused{attempt}");
        let (err, ok) = node.cni("ADD", &id, Some(&pod), &conf);
        assert!(!ok, "ADD should fail: {err}");
        assert!(
            err["msg"].as_str().unwrap_or("").contains("cni0"),
            "the bridge plugin's error is passed on: {err}"
        );
        assert_eq!(
            node.reservations(),
            vec![],
            "attempt {attempt}: address leaked"
        );
        assert_eq!(
            node.saved(),
            Vec::<String>::new(),
            "attempt {attempt}: file leaked"
        );
        let (out, ok) = node.cni("DEL", &id, Some(&pod), &conf);
        assert!(ok, "DEL after a failed ADD: {out}");
    }
}

/// (a) A relative `dataDir`, `subnetFile` or `ipam.dataDir` is refused
/// with code 7 naming the field, before anything is written anywhere.
#[test]
fn relative_paths_are_refused() {
    require_netns!();
    let node = Node::new();
    let pod = Netns::new("cni-pod").unwrap();
    for (field, patch) in [
        ("dataDir", json!({"dataDir": "data"})),
        ("subnetFile", json!({"subnetFile": "run/subnet.env"})),
        ("ipam.dataDir", json!({"ipam": {"dataDir": "./ipam"}})),
    ] {
        let mut conf = node.netconf("1.0.0");
        for (k, v) in patch.as_object().unwrap() {
            conf[k] = v.clone();
        }
        for command in ["ADD", "DEL"] {
            let (err, ok) = node.cni(command, "rel", Some(&pod), &conf);
            assert!(!ok, "{field} {command}: {err}");
            assert_eq!(err["code"], code::INVALID_NETWORK_CONFIG, "{field}: {err}");
            let msg = err["msg"].as_str().unwrap();
            assert!(
                msg.contains(&format!("`{field}`")) && msg.contains("absolute"),
                "{msg}"
            );
        }
        assert!(node.reservations().is_empty() && node.saved().is_empty());
    }
}

/// (c) Runtimes hand plugins their whole environment: a bad
/// WEFT_CNI_DELEGATE_TIMEOUT there falls back to the default with a
/// warning, so ADD and DEL still work and nothing leaks; DEL of a container
/// never added succeeds.
#[test]
fn a_bad_timeout_in_the_environment_does_not_break_del() {
    require_netns!();
    let node = Node::new();
    let pod = Netns::new("cni-pod").unwrap();
    let conf = node.netconf("1.0.0");
    let run = |command: &str, id: &str| {
        let call = CniCall {
            command,
            id,
            netns: &pod.path().display().to_string(),
            ifname: "eth0",
            cni_path: Path::new(CNI_PATH),
        };
        let mut cmd = node.host.command(&[BIN]);
        cmd.env("WEFT_CNI_DELEGATE_TIMEOUT", "soon");
        call.run(cmd, conf.to_string().as_bytes()).unwrap()
    };
    let add = run("ADD", "envctr");
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(String::from_utf8_lossy(&add.stderr).contains("WEFT_CNI_DELEGATE_TIMEOUT"));
    assert_eq!(node.saved(), vec!["envctr".to_string()]);
    let del = run("DEL", "envctr");
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(node.saved().is_empty() && node.reservations().is_empty());
    let unknown = run("DEL", "never-added");
    assert!(
        unknown.status.success(),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}
