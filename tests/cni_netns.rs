//! weft-cni with Debian's reference plugins (`/usr/lib/cni`, package
//! containernetworking-plugins) in network namespaces: a "host" namespace
//! where the plugin runs (`ip netns exec <host> weft-cni`) and "pod"
//! namespaces given as `CNI_NETNS`. host-local's state and weft-cni's
//! `dataDir` live in a temporary directory. Needs root; skipped otherwise.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft::cni::error::code;
use weft::cni::types::Cidr;
use weft_integration::cni_call::{flannel_netconf, CniCall};
use weft_netns::{require_netns, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");
const CNI_PATH: &str = "/usr/lib/cni";
const SEED_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const GATEWAY: &str = "10.244.1.1";
/// A dual-stack node's subnet.env (flanneld's key order).
const DUAL_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                        FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
                        FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
/// An IPv6-only node's: no `FLANNEL_NETWORK`/`FLANNEL_SUBNET` at all.
const V6_ENV: &str = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
                      FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const GATEWAY6: &str = "fc00:0:0:1::1";

/// A node: its "host" namespace and a scratch directory with the subnet
/// file, weft-cni's dataDir and host-local's dataDir.
struct Node {
    host: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node::with_env(SEED_ENV)
    }

    /// A node whose subnet file says `env`.
    fn with_env(env: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), env).unwrap();
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

    /// host-local's reservations, of both families: (ip, container ID).
    fn reservations(&self) -> Vec<(IpAddr, String)> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(|e| {
                let e = e.unwrap();
                let ip: IpAddr = e.file_name().to_str()?.parse().ok()?;
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

/// The global addresses of `dev` of one family (`ip`'s `-4`/`-6`), as
/// `ip -j` gives them (`local`, `prefixlen`, `tentative`, …).
fn global_addrs(ns: &Netns, flag: &str, dev: &str) -> Vec<Value> {
    let links = ns.ip_json(&[flag, "addr", "show", "dev", dev]).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .collect()
}

fn cidr_of(info: &Value) -> String {
    format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"])
}

/// The routes of one family (`-4`/`-6`) in `ns`: (dst, gateway).
fn routes(ns: &Netns, flag: &str) -> Vec<(String, String)> {
    let routes = ns.ip_json(&[flag, "route", "show"]).unwrap();
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["gateway"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The pod's IPv4 address on eth0 and its routes, from the kernel.
fn pod_state(pod: &Netns) -> (String, Vec<(String, String)>) {
    let addr = cidr_of(&global_addrs(pod, "-4", "eth0")[0]);
    (addr, routes(pod, "-4"))
}

/// Waits (polling, 10 s at most) until no IPv6 address of `dev` is
/// tentative any more. The bridge plugin turns DAD off on the pod's
/// interface (`accept_dad=0`) and waits for its addresses to settle, but
/// the gateway it puts on the bridge goes through DAD (about a second),
/// and until then the bridge does not answer for it.
fn wait_for_dad(ns: &Netns, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addrs = global_addrs(ns, "-6", dev);
        assert!(
            !addrs.iter().any(|a| a["dadfailed"] == true),
            "DAD failed on {dev}: {addrs:?}"
        );
        if !addrs.iter().any(|a| a["tentative"] == true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} still has tentative addresses: {addrs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One address family of a dual-stack node, as the tests check it.
struct Family {
    /// `ip`'s and `ping`'s flag.
    flag: &'static str,
    /// The node's subnet (`FLANNEL_SUBNET`/`FLANNEL_IPV6_SUBNET` as a network).
    subnet: &'static str,
    /// The bridge's address: the pods' gateway.
    gateway: &'static str,
    /// The cluster network (`FLANNEL_NETWORK`/`FLANNEL_IPV6_NETWORK`).
    network: &'static str,
    /// The default route's destination in results.
    default_dst: &'static str,
    /// `"version"` of a 0.3.x/0.4.0 result's IP.
    version: &'static str,
}

const V4: Family = Family {
    flag: "-4",
    subnet: "10.244.1.0/24",
    gateway: GATEWAY,
    network: "10.244.0.0/16",
    default_dst: "0.0.0.0/0",
    version: "4",
};

const V6: Family = Family {
    flag: "-6",
    subnet: "fc00:0:0:1::/64",
    gateway: GATEWAY6,
    network: "fc00::/48",
    default_dst: "::/0",
    version: "6",
};

/// A result's IPs in any version: (address, gateway, `version` if any).
fn result_ips(result: &Value) -> Vec<(String, String, Option<String>)> {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let legacy = ["ip4", "ip6"]
        .into_iter()
        .filter_map(|k| result.get(k))
        .map(|ip| (text(&ip["ip"]), text(&ip["gateway"]), None));
    let current = result["ips"].as_array().into_iter().flatten().map(|ip| {
        let version = ip.get("version").map(text);
        (text(&ip["address"]), text(&ip["gateway"]), version)
    });
    legacy.chain(current).collect()
}

/// A result's routes in any version: (dst, gw).
fn result_routes(result: &Value) -> Vec<(String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let lists = [
        &result["routes"],
        &result["ip4"]["routes"],
        &result["ip6"]["routes"],
    ];
    lists
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|r| (text(&r["dst"]), text(&r["gw"])))
        .collect()
}

/// Whether `address` (`ip/prefix`) is a pod address of `fam`'s node subnet.
fn in_subnet(address: &str, fam: &Family) -> bool {
    let a: Cidr = address.parse().unwrap();
    let s: Cidr = fam.subnet.parse().unwrap();
    a.prefix == s.prefix
        && s.contains(&a)
        && a.addr != s.addr
        && a.addr != fam.gateway.parse::<IpAddr>().unwrap()
}

/// Checks one family of an ADD at `version`: the result has one address of
/// the node's subnet with the bridge as gateway (with `"version"` only in
/// 0.3.x/0.4.0), a default route and the cluster route; the kernel agrees
/// (the address on eth0, settled; both routes via the gateway; the gateway
/// on cni0) and the pod reaches the gateway. Returns the pod's address.
fn assert_family(node: &Node, pod: &Netns, fam: &Family, version: &str, result: &Value) -> IpAddr {
    let ips: Vec<_> = result_ips(result)
        .into_iter()
        .filter(|(address, _, _)| address.parse::<Cidr>().unwrap().is_ipv4() == (fam.flag == "-4"))
        .collect();
    assert_eq!(ips.len(), 1, "{version} {}: {result}", fam.flag);
    let (address, gateway, tag) = &ips[0];
    assert!(in_subnet(address, fam), "{version}: {address}");
    assert_eq!(gateway, fam.gateway, "{version}: {result}");
    let versioned = ["0.3.0", "0.3.1", "0.4.0"].contains(&version);
    assert_eq!(
        tag.as_deref(),
        versioned.then_some(fam.version),
        "{version}: {result}"
    );
    let given = result_routes(result);
    for want in [(fam.default_dst, fam.gateway), (fam.network, "")] {
        assert!(
            given.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{version}: {want:?} not in {given:?}"
        );
    }

    let on_eth0 = global_addrs(pod, fam.flag, "eth0");
    assert_eq!(on_eth0.len(), 1, "{on_eth0:?}");
    assert_eq!(&cidr_of(&on_eth0[0]), address);
    assert!(
        on_eth0[0].get("tentative").is_none(),
        "settled: {on_eth0:?}"
    );
    let kernel = routes(pod, fam.flag);
    for want in [("default", fam.gateway), (fam.network, fam.gateway)] {
        assert!(
            kernel.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{version}: {want:?} not in {kernel:?}"
        );
    }
    let on_bridge: Vec<String> = global_addrs(&node.host, fam.flag, "cni0")
        .iter()
        .map(cidr_of)
        .collect();
    let prefix = fam.subnet.split_once('/').unwrap().1;
    assert_eq!(on_bridge, [format!("{}/{prefix}", fam.gateway)]);
    if fam.flag == "-6" {
        wait_for_dad(&node.host, "cni0");
    }
    pod.exec(&["ping", fam.flag, "-c1", "-W2", fam.gateway])
        .unwrap();
    address.parse::<Cidr>().unwrap().addr
}

fn in_node_subnet(address: &str) -> bool {
    let (ip, prefix) = address.split_once('/').unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
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

/// Dual-stack: each ADD gives the pod an IPv4 and an IPv6 address of the
/// node's subnets, a default route and the cluster route of each family
/// (flannel's ranges and routes, the bridge's `isDefaultGateway`), the
/// bridge both gateways, and two reservations; CHECK passes (and notices a
/// lost v6 route); DEL releases both reservations.
#[test]
fn dual_stack_add_check_del_in_each_version() {
    require_netns!();
    let node = Node::with_env(DUAL_ENV);
    for (i, v) in ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .into_iter()
        .enumerate()
    {
        let pod = Netns::new("cni-pod").unwrap();
        let id = format!("dual{i}");
        let conf = node.netconf(v);
        let (result, ok) = node.cni("ADD", &id, Some(&pod), &conf);
        assert!(ok, "{v}: {result}");
        assert_eq!(result["cniVersion"], v);
        let mut addrs: Vec<IpAddr> = [V4, V6]
            .iter()
            .map(|fam| assert_family(&node, &pod, fam, v, &result))
            .collect();
        addrs.sort();
        let mut reserved = node.reservations();
        reserved.sort();
        assert_eq!(
            reserved,
            addrs.iter().map(|a| (*a, id.clone())).collect::<Vec<_>>(),
            "{v}: one reservation per family"
        );
        assert_eq!(node.saved(), std::slice::from_ref(&id));

        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        let (out, ok) = node.cni("CHECK", &id, Some(&pod), &check);
        if v.starts_with("0.2") || v.starts_with("0.3") {
            assert_eq!(out["code"], code::INCOMPATIBLE_VERSION, "{v}: {out}");
        } else {
            assert!(ok, "{v}: CHECK: {out}");
        }
        if v == "1.1.0" {
            pod.ip(&["-6", "route", "del", "fc00::/48"]).unwrap();
            let (out, ok) = node.cni("CHECK", &id, Some(&pod), &check);
            assert!(
                !ok && out["msg"].as_str().unwrap().contains("fc00::"),
                "a lost IPv6 cluster route is reported: {out}"
            );
        }

        for _ in 0..2 {
            let (out, ok) = node.cni("DEL", &id, Some(&pod), &conf);
            assert!(ok, "{v}: DEL: {out}");
        }
        assert!(pod.ip(&["link", "show", "eth0"]).is_err(), "eth0 is gone");
        assert!(node.saved().is_empty());
        assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    }
}

/// An IPv6-only node (no FLANNEL_NETWORK/FLANNEL_SUBNET): the pod gets an
/// IPv6 address, routes and gateway and nothing of IPv4.
#[test]
fn ipv6_only_add_check_del() {
    require_netns!();
    let node = Node::with_env(V6_ENV);
    for (i, v) in ["0.2.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("cni-pod").unwrap();
        let id = format!("v6only{i}");
        let conf = node.netconf(v);
        let (result, ok) = node.cni("ADD", &id, Some(&pod), &conf);
        assert!(ok, "{v}: {result}");
        assert_eq!(result_ips(&result).len(), 1, "{v}: {result}");
        assert!(result.get("ip4").is_none(), "{v}: {result}");
        let addr = assert_family(&node, &pod, &V6, v, &result);
        assert!(global_addrs(&pod, "-4", "eth0").is_empty());
        assert_eq!(routes(&pod, "-4"), [], "no IPv4 routes");
        assert!(global_addrs(&node.host, "-4", "cni0").is_empty());
        assert_eq!(node.reservations(), [(addr, id.clone())]);
        if v == "1.1.0" {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            let (out, ok) = node.cni("CHECK", &id, Some(&pod), &check);
            assert!(ok, "CHECK: {out}");
        }
        let (out, ok) = node.cni("DEL", &id, Some(&pod), &conf);
        assert!(ok, "{v}: DEL: {out}");
        assert!(node.saved().is_empty());
        assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    }
}

/// Two dual-stack pods on the node's bridge reach each other over IPv6 and
/// IPv4.
#[test]
fn two_dual_stack_pods_ping_each_other() {
    require_netns!();
    let node = Node::with_env(DUAL_ENV);
    let conf = node.netconf("1.0.0");
    let pods = [Netns::new("cni-a").unwrap(), Netns::new("cni-b").unwrap()];
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (result, ok) = node.cni("ADD", &format!("pod{i}"), Some(pod), &conf);
            assert!(ok, "{result}");
            result
        })
        .collect();
    for (from, to) in [(0, 1), (1, 0)] {
        for (address, _, _) in result_ips(&results[to]) {
            let ip = address.split_once('/').unwrap().0;
            let flag = if ip.contains(':') { "-6" } else { "-4" };
            pods[from]
                .exec(&["ping", flag, "-c1", "-W2", ip])
                .unwrap_or_else(|e| panic!("pod{from} -> pod{to} {ip}: {e}"));
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        assert!(node.cni("DEL", &format!("pod{i}"), Some(pod), &conf).1);
    }
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
}

/// GC on a dual-stack node releases both reservations of a leaked
/// attachment (and a v6 reservation whose saved file is gone), and keeps
/// both of the valid one.
#[test]
fn gc_releases_both_families_of_a_leaked_dual_stack_attachment() {
    require_netns!();
    let node = Node::with_env(DUAL_ENV);
    let conf = node.netconf("1.1.0");
    let keep = Netns::new("cni-keep").unwrap();
    let (kept, ok) = node.cni("ADD", "keep", Some(&keep), &conf);
    assert!(ok, "{kept}");
    let leak = Netns::new("cni-leak").unwrap();
    assert!(node.cni("ADD", "leak", Some(&leak), &conf).1);
    drop(leak);
    std::fs::write(node.ipam_dir().join("fc00:0:0:1::200"), "ghost\r\neth0").unwrap();
    assert_eq!(node.reservations().len(), 5);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let (out, ok) = node.cni("GC", "", None, &gc);
    assert!(ok, "GC: {out}");
    assert_eq!(node.saved(), ["keep"]);
    let mut want: Vec<(IpAddr, String)> = result_ips(&kept)
        .iter()
        .map(|(a, _, _)| (a.parse::<Cidr>().unwrap().addr, "keep".to_owned()))
        .collect();
    want.sort();
    let mut left = node.reservations();
    left.sort();
    assert_eq!(left, want);
    wait_for_dad(&node.host, "cni0");
    keep.exec(&["ping", "-6", "-c1", "-W2", GATEWAY6]).unwrap();
    assert!(node.cni("DEL", "keep", Some(&keep), &conf).1);
    assert!(node.reservations().is_empty());
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
    let kept_ip: IpAddr = kept["ips"][0]["address"]
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
