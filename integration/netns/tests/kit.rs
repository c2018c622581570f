//! End-to-end tests of the namespace kit. They need root (CAP_SYS_ADMIN) and
//! are skipped with a message otherwise.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use weft_netns::{require_netns, sweep_stale, veth, Error, Netns, Switch};

/// Names listed by `ip netns list` (read-only, from the root namespace).
fn listed() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn is_listed(name: &str) -> bool {
    listed().iter().any(|n| n == name)
}

#[test]
fn names_are_prefixed_and_unique() {
    require_netns!();
    let a = Netns::new("dup").unwrap();
    let b = Netns::new("dup").unwrap();
    let prefix = format!("weft-{}-", std::process::id());
    assert!(a.name().starts_with(&prefix), "{}", a.name());
    assert!(
        b.name().starts_with(&format!("{prefix}dup")),
        "{}",
        b.name()
    );
    assert_ne!(a.name(), b.name());
    assert_eq!(
        a.path(),
        std::path::Path::new("/var/run/netns").join(a.name())
    );
    assert!(a.path().exists());
    assert!(Netns::new("bad/role").is_err());
}

#[test]
fn veth_ping() {
    require_netns!();
    let a = Netns::new("ping-a").unwrap();
    let b = Netns::new("ping-b").unwrap();
    veth(&a, "va", &b, "vb").unwrap();
    a.add_addr("va", "10.77.1.1/24").unwrap();
    b.add_addr("vb", "10.77.1.2/24").unwrap();
    let out = a.exec(&["ping", "-c1", "-W2", "10.77.1.2"]).unwrap();
    assert!(out.contains("1 received"), "{out}");

    // lo is up, and JSON helpers work.
    let lo = a.ip_json(&["link", "show", "dev", "lo"]).unwrap();
    let flags = lo[0]["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "{lo}");
    let routes = b.ip_json(&["route", "show"]).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.77.1.0/24"),
        "{routes}"
    );
    assert!(b.ip(&["route", "show"]).unwrap().contains("10.77.1.0/24"));
    assert!(a.ifindex("va").unwrap() > 1);
}

#[test]
fn switch_bridges_nodes() {
    require_netns!();
    let sw = Switch::new("sw").unwrap();
    let n1 = Netns::new("n1").unwrap();
    let n2 = Netns::new("n2").unwrap();
    let p1 = sw.attach(&n1, "eth0", "10.77.3.1/24").unwrap();
    sw.attach(&n2, "eth0", "10.77.3.2/24").unwrap();

    let port = sw.ip_json(&["link", "show", "dev", &p1]).unwrap();
    assert_eq!(port[0]["master"], Switch::BRIDGE, "{port}");

    n1.set_mtu("eth0", 1400).unwrap();
    let eth0 = n1.ip_json(&["link", "show", "dev", "eth0"]).unwrap();
    assert_eq!(eth0[0]["mtu"], 1400);

    n1.exec(&["ping", "-c1", "-W2", "10.77.3.2"]).unwrap();

    sw.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let fwd = sw.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).unwrap();
    assert_eq!(fwd.trim(), "1");
    assert_eq!(sw.netns().name(), sw.name());
}

/// The switch's bridge keeps its MAC address while ports join (a bridge
/// left to choose takes its lowest port's, which left lab nodes with a
/// stale ARP entry for an API server on the bridge).
#[test]
fn the_switch_keeps_its_mac_as_ports_join() {
    require_netns!();
    let sw = Switch::new("macsw").unwrap();
    let mac = |ns: &Netns| ns.ip_json(&["link", "show", "br0"]).unwrap()[0]["address"].clone();
    let before = mac(sw.netns());
    let nodes: Vec<Netns> = (0..6)
        .map(|i| Netns::new(&format!("macn{i}")).unwrap())
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        sw.attach(n, "eth0", &format!("10.9.0.{}/24", i + 2))
            .unwrap();
        assert_eq!(mac(sw.netns()), before, "after port {i}");
    }
}

#[test]
fn manual_topology() {
    require_netns!();
    let ns = Netns::new("manual").unwrap();
    ns.add_bridge("brx").unwrap();
    veth(&ns, "d0", &ns, "d1").unwrap();
    ns.set_master("d0", "brx").unwrap();
    ns.link_up("d0").unwrap();
    ns.add_addr("d1", "10.77.4.2/24").unwrap();
    ns.add_addr("brx", "10.77.4.1/24").unwrap();
    let d0 = ns.ip_json(&["link", "show", "dev", "d0"]).unwrap();
    assert_eq!(d0[0]["master"], "brx");
    assert_eq!(
        ns.ifindex("d0").unwrap() as u64,
        d0[0]["ifindex"].as_u64().unwrap()
    );
}

#[test]
fn command_errors_and_timeouts() {
    require_netns!();
    let mut ns = Netns::new("errors").unwrap();
    let err = ns.ip(&["link", "show", "dev", "nosuch0"]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Command { .. }), "{msg}");
    assert!(
        msg.contains(&format!("ip -n {} link show dev nosuch0", ns.name())),
        "{msg}"
    );
    assert!(msg.contains("exit status"), "{msg}");
    assert!(msg.to_lowercase().contains("nosuch0"), "{msg}");

    let out = ns
        .exec_status(&["sh", "-c", "echo out; echo err >&2; exit 7"])
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(ns.exec(&["false"]).is_err());

    ns.set_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let err = ns.exec(&["sleep", "10"]).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn spawn_runs_in_namespace() {
    require_netns!();
    let ns = Netns::new("spawn").unwrap();
    let ns_ino = std::fs::metadata(ns.path()).unwrap().ino();
    let mut child = ns.spawn(&["sleep", "30"]).unwrap();
    let link = format!("/proc/{}/ns/net", child.id());
    let want = format!("net:[{ns_ino}]");
    // `ip netns exec` enters the namespace just before exec'ing `sleep`.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = std::fs::read_link(&link)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen, want);
}

#[test]
fn run_executes_inside_namespace() {
    require_netns!();
    let a = Netns::new("run-a").unwrap();
    let b = Netns::new("run-b").unwrap();
    veth(&a, "runveth", &b, "runpeer").unwrap();
    a.add_addr("runveth", "10.77.2.1/24").unwrap();

    let (devs, bound) = a
        .run(|| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let devs = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            let bound = std::net::UdpSocket::bind("10.77.2.1:0").is_ok();
            (devs, bound)
        })
        .unwrap();
    assert!(devs.contains("runveth:"), "{devs}");
    assert!(!devs.contains("runpeer:"), "{devs}");
    assert!(bound, "could not bind the namespace's address inside it");
    // The test thread itself is still in the host namespace.
    let here = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(!here.contains("runveth:"));

    // Panics propagate.
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        a.run(|| async { panic!("boom in netns") })
    }));
    let payload = panicked.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in netns"));
}

#[test]
fn spawn_task_runs_until_stopped() {
    require_netns!();
    let ns = Netns::new("task").unwrap();
    ns.add_bridge("marker0").unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = ns
        .spawn_task(move || async move {
            let mut ticks = 0u32;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => ticks += 1,
                }
            }
            let devs = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            (ticks, devs.contains("marker0:"))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!task.is_finished());
    assert_eq!(task.netns_name(), ns.name());
    stop_tx.send(()).unwrap();
    let (ticks, saw_marker) = task.join().unwrap();
    assert!(ticks > 0);
    assert!(saw_marker);
}

#[test]
fn drop_deletes_namespace() {
    require_netns!();
    let ns = Netns::new("dropme").unwrap();
    let name = ns.name().to_owned();
    assert!(is_listed(&name));
    drop(ns);
    assert!(!is_listed(&name), "{name} still listed");
}

#[test]
fn panic_deletes_namespace() {
    require_netns!();
    let mut name = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::new("panicky").unwrap();
        name = ns.name().to_owned();
        assert!(is_listed(&name));
        panic!("test body failed with {} alive", ns.name());
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!is_listed(&name), "{name} survived the panic");
}

#[test]
fn sweep_removes_stale_namespaces() {
    require_netns!();
    // Pids never exceed 2^22 (the kernel's maximum pid_max), so this one is
    // never running; adding our own pid keeps concurrent runs apart.
    let stale = format!("weft-{}-x", 10_000_000 + std::process::id());
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    let live = Netns::new("sweep-live").unwrap();

    let swept = sweep_stale().unwrap();
    let still_there = is_listed(&stale);
    if still_there {
        // Never leave it behind, even if the assertion below fails.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &stale])
            .status();
    }
    assert!(!still_there, "stale namespace not swept");
    // Another test process starting meanwhile may have swept it first.
    if !swept.contains(&stale) {
        eprintln!("{stale} was swept by someone else");
    }
    assert!(is_listed(live.name()), "sweep removed a live namespace");
}

#[test]
fn result_returning_test() -> weft_netns::Result<()> {
    require_netns!(Ok(()));
    let ns = Netns::new("result")?;
    assert_eq!(ns.exec(&["echo", "hi"])?, "hi\n");
    Ok(())
}
