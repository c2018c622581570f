//! weft-cni without namespaces: the generated delegate configuration, the
//! subnet file reader, result conversion between every pair of versions,
//! and every error path, through the library and through the binary with a
//! fake delegate (a shell script) in `CNI_PATH`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_integration::cni_call::flannel_netconf;

use serde_json::{json, Value};
use weft::cni::error::code;
use weft::cni::{result, CniEnv, Command as Cmd, NetConf, SubnetFile, Version};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");
const SEED_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fn subnet(text: &str) -> SubnetFile {
    SubnetFile::parse(text, Path::new("/run/flannel/subnet.env")).unwrap()
}

fn conf(v: Value) -> NetConf {
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

fn delegate(netconf: Value, env: &str) -> Value {
    Value::Object(conf(netconf).delegate_config(&subnet(env)).unwrap())
}

fn config_error(netconf: Value, env: &str) -> weft::cni::CniError {
    conf(netconf).delegate_config(&subnet(env)).unwrap_err()
}

#[test]
fn version_reply_lists_every_version() {
    let out = weft::cni::run(&vars(&[("CNI_COMMAND", "VERSION")]), &b""[..]);
    assert!(out.success);
    assert_eq!(
        out.stdout,
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
    );
}

#[test]
fn delegate_defaults_as_flannel() {
    let d = delegate(
        json!({"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel"}),
        SEED_ENV,
    );
    assert_eq!(
        d,
        json!({
            "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "ipMasq": false, "mtu": 1450,
            "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "10.244.0.0/16"}]}
        })
    );
}

#[test]
fn delegate_of_flannels_manifest_and_overrides() {
    // kube-flannel.yml's conflist entry.
    let d = delegate(
        json!({"name": "cbr0", "cniVersion": "1.1.0", "type": "flannel",
               "delegate": {"hairpinMode": true, "isDefaultGateway": true}}),
        SEED_ENV,
    );
    assert_eq!(d["hairpinMode"], true);
    assert_eq!(d["isDefaultGateway"], true);
    assert_eq!(d["isGateway"], true);
    assert_eq!(d["cniVersion"], "1.0.0", "1.1.0 is delegated as 1.0.0");
    // Given values win; ipMasq follows !FLANNEL_IPMASQ when not given.
    let d = delegate(
        json!({"name": "n", "cniVersion": "0.4.0",
               "delegate": {"ipMasq": true, "mtu": 9000, "isGateway": false, "bridge": "br-x"}}),
        SEED_ENV,
    );
    assert_eq!(
        (d["ipMasq"].clone(), d["mtu"].clone()),
        (json!(true), json!(9000))
    );
    assert_eq!(
        (d["isGateway"].clone(), d["bridge"].clone()),
        (json!(false), json!("br-x"))
    );
    let no_masq = SEED_ENV.replace("IPMASQ=true", "IPMASQ=false");
    assert_eq!(delegate(json!({"name": "n"}), &no_masq)["ipMasq"], true);
    // Not a bridge: no isGateway; no cniVersion given means 0.1.0.
    let d = delegate(
        json!({"name": "n", "delegate": {"type": "ipvlan"}}),
        SEED_ENV,
    );
    assert_eq!(d["type"], "ipvlan");
    assert!(d.get("isGateway").is_none());
    assert_eq!(d["cniVersion"], "0.1.0");
}

#[test]
fn delegate_ipam_runtime_config_and_dual_stack() {
    let d = delegate(
        json!({"name": "n", "cniVersion": "1.0.0",
               "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
               "ipam": {"dataDir": "/x", "type": "host-local", "ranges": "ignored",
                        "routes": [{"dst": "192.168.0.0/16", "gw": "10.244.1.254"}, {"dst": "10.244.0.0/16"}]}}),
        SEED_ENV,
    );
    assert_eq!(d["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
    assert_eq!(
        d["ipam"],
        json!({"dataDir": "/x", "type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
               "routes": [{"dst": "192.168.0.0/16", "gw": "10.244.1.254"}, {"dst": "10.244.0.0/16"}]}),
        "the cluster route given already is not added twice"
    );
    let dual = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    let d = delegate(json!({"name": "n", "ipam": {"type": "other-ipam"}}), dual);
    assert_eq!(
        d["ipam"],
        json!({"type": "other-ipam",
               "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fc00:0:0:1::/64"}]],
               "routes": [{"dst": "10.244.0.0/16"}, {"dst": "10.245.0.0/16"}, {"dst": "fc00::/48"}]})
    );
    let v6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    assert_eq!(
        delegate(json!({"name": "n"}), v6)["ipam"]["ranges"],
        json!([[{"subnet": "fc00:0:0:1::/64"}]])
    );
}

#[test]
fn bad_delegates_are_rejected_naming_the_field() {
    for (d, field) in [
        (json!({"name": "x"}), "delegate.name"),
        (json!({"ipam": {}}), "delegate.ipam"),
        (json!({"type": 5}), "delegate.type"),
        (json!({"type": "../../bin/sh"}), "delegate.type"),
    ] {
        let e = config_error(json!({"name": "n", "delegate": d}), SEED_ENV);
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "{e:?}");
        assert!(e.msg.contains(field), "{field}: {}", e.msg);
    }
    for (ipam, field) in [
        (json!({"routes": "x"}), "ipam.routes"),
        (
            json!({"routes": [{"dst": "10.0.0.0/33"}]}),
            "ipam.routes[0]",
        ),
        (json!({"routes": [{"gw": "10.0.0.1"}]}), "ipam.routes[0]"),
        (json!({"type": 7}), "ipam.type"),
    ] {
        let e = config_error(json!({"name": "n", "ipam": ipam}), SEED_ENV);
        assert!(e.msg.contains(field), "{field}: {}", e.msg);
    }
}

#[test]
fn netconf_errors() {
    let cases: &[(&[u8], u32, &str)] = &[
        (b"{not json", code::DECODING_FAILURE, "decode"),
        (b"[1,2]", code::DECODING_FAILURE, "object"),
        (b"", code::DECODING_FAILURE, "decode"),
        (
            br#"{"cniVersion":"0.5.0","name":"n"}"#,
            code::INCOMPATIBLE_VERSION,
            "incompatible",
        ),
        (
            br#"{"cniVersion":"2.0.0","name":"n"}"#,
            code::INCOMPATIBLE_VERSION,
            "incompatible",
        ),
        (
            br#"{"cniVersion":1,"name":"n"}"#,
            code::INVALID_NETWORK_CONFIG,
            "cniVersion",
        ),
        (
            br#"{"cniVersion":"1.0.0"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`name` is required",
        ),
        (
            br#"{"name":"../etc"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`name`",
        ),
        (
            br#"{"name":"n","subnetFile":5}"#,
            code::INVALID_NETWORK_CONFIG,
            "`subnetFile`",
        ),
        (
            br#"{"name":"n","dataDir":""}"#,
            code::INVALID_NETWORK_CONFIG,
            "`dataDir`",
        ),
        (
            br#"{"name":"n","dataDir":"var/lib/cni/flannel"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`dataDir` must be an absolute path",
        ),
        (
            br#"{"name":"n","subnetFile":"subnet.env"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`subnetFile` must be an absolute path",
        ),
        (
            br#"{"name":"n","ipam":{"dataDir":"ipam"}}"#,
            code::INVALID_NETWORK_CONFIG,
            "`ipam.dataDir` must be an absolute path",
        ),
        (
            br#"{"name":"n","delegate":[]}"#,
            code::INVALID_NETWORK_CONFIG,
            "`delegate`",
        ),
        (
            br#"{"name":"n","ipam":"x"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`ipam`",
        ),
        (
            br#"{"name":"n","runtimeConfig":1}"#,
            code::INVALID_NETWORK_CONFIG,
            "`runtimeConfig`",
        ),
        (
            br#"{"name":"n","prevResult":"x"}"#,
            code::INVALID_NETWORK_CONFIG,
            "`prevResult`",
        ),
        (
            br#"{"name":"n","cni.dev/valid-attachments":[1]}"#,
            code::INVALID_NETWORK_CONFIG,
            "valid-attachments",
        ),
    ];
    for (input, want, text) in cases {
        let e = NetConf::parse(input).unwrap_err();
        assert_eq!(e.code, *want, "{}: {e:?}", String::from_utf8_lossy(input));
        assert!(
            e.msg.contains(text),
            "{}: {}",
            String::from_utf8_lossy(input),
            e.msg
        );
    }
    let big = vec![b' '; (1 << 20) + 1];
    assert_eq!(
        NetConf::parse(&big).unwrap_err().code,
        code::DECODING_FAILURE
    );
    let c =
        conf(json!({"name": "n", "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}));
    assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    assert_eq!(c.version, Version::V0_1_0);
    assert_eq!(c.data_dir, Path::new("/var/lib/cni/flannel"));
    assert_eq!(c.subnet_file, Path::new("/run/flannel/subnet.env"));
}

#[test]
fn subnet_file_from_weftd_and_errors() {
    // Exactly what weftd writes.
    let written = weft::subnet_env::SubnetEnv {
        families: vec![weft::subnet_env::FamilyLines {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }],
        mtu: 1450,
        ipmasq: true,
    }
    .render();
    let s = subnet(&written);
    assert_eq!(s.subnet.unwrap().to_string(), "10.244.1.0/24");
    assert_eq!(s.networks[0].to_string(), "10.244.0.0/16");
    assert_eq!((s.mtu, s.ipmasq), (1450, true));
    assert_eq!(subnet(&SEED_ENV.replace('\n', "\r\n")), s, "CRLF is fine");
    let path = Path::new("/run/flannel/subnet.env");
    for (text, key) in [
        ("FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "missing FLANNEL_NETWORK"),
        ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "missing FLANNEL_SUBNET"),
        ("", "missing FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK), FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET), FLANNEL_MTU, FLANNEL_IPMASQ"),
    ] {
        let e = SubnetFile::parse(text, path).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains(key) && e.msg.contains("/run/flannel/subnet.env"), "{}", e.msg);
        assert!(e.details.contains("weftd pod"), "{}", e.details);
    }
    for (from, to, key) in [
        (
            "SUBNET=10.244.1.1/24",
            "SUBNET=10.244.1.1/33",
            "line 2: FLANNEL_SUBNET",
        ),
        (
            "SUBNET=10.244.1.1/24",
            "SUBNET=fc00::1/64",
            "line 2: FLANNEL_SUBNET",
        ),
        (
            "NETWORK=10.244.0.0/16",
            "NETWORK=10.244.0.0/16,x",
            "line 1: FLANNEL_NETWORK",
        ),
        ("MTU=1450", "MTU=abc", "line 3: FLANNEL_MTU"),
        ("MTU=1450", "MTU=0", "line 3: FLANNEL_MTU"),
        ("IPMASQ=true", "IPMASQ=yes", "line 4: FLANNEL_IPMASQ"),
    ] {
        let e = SubnetFile::parse(&SEED_ENV.replace(from, to), path).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains(key), "{key}: {}", e.msg);
        assert!(e.details.contains("weftd pod"));
    }
    let dir = tempfile::tempdir().unwrap();
    let e = SubnetFile::load(&dir.path().join("missing.env")).unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert!(e.msg.contains("does not exist") && e.details.contains("weftd pod"));
    assert_eq!(
        SubnetFile::load(dir.path()).unwrap_err().code,
        code::IO_FAILURE
    );
    std::fs::write(dir.path().join("bin"), b"\xff\xfe").unwrap();
    assert_eq!(
        SubnetFile::load(&dir.path().join("bin")).unwrap_err().code,
        code::INVALID_NETWORK_CONFIG
    );
}

/// A 1.1.0 result with everything: three interfaces, IPv4 and IPv6, a 1.1 route field.
fn full_result() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0", "mac": "aa:00:00:00:00:01"},
                       {"name": "veth1", "mac": "aa:00:00:00:00:02", "mtu": 1450},
                       {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2},
                {"address": "fc00:0:0:1::2/64", "gateway": "fc00:0:0:1::1", "interface": 2}],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1", "mtu": 1400},
                   {"dst": "fc00::/48"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    })
}

#[test]
fn result_conversion_to_every_version() {
    let r = full_result();
    let to = |v| result::convert(&r, Version::V1_1_0, v).unwrap();
    assert_eq!(to(Version::V1_1_0), r);
    let v100 = to(Version::V1_0_0);
    assert_eq!(v100["cniVersion"], "1.0.0");
    assert!(v100["routes"][1].get("mtu").is_none() && v100["interfaces"][1].get("mtu").is_none());
    assert!(v100["ips"][0].get("version").is_none());
    for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
        let out = to(v);
        assert_eq!(out["cniVersion"], v.as_str());
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][1]["version"], "6");
        assert_eq!(out["ips"][0]["interface"], 2);
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        // Back up to 1.0.0: the same as converting directly.
        assert_eq!(result::convert(&out, v, Version::V1_0_0).unwrap(), v100);
    }
    for v in [Version::V0_1_0, Version::V0_2_0] {
        let out = to(v);
        assert_eq!(
            out,
            json!({"cniVersion": v.as_str(),
                   "ip4": {"ip": "10.244.1.2/24", "gateway": "10.244.1.1",
                           "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]},
                   "ip6": {"ip": "fc00:0:0:1::2/64", "gateway": "fc00:0:0:1::1", "routes": [{"dst": "fc00::/48"}]},
                   "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}})
        );
        // Up again: version fields filled in, interfaces are gone.
        let up = result::convert(&out, v, Version::V0_4_0).unwrap();
        assert_eq!(
            up["ips"][0],
            json!({"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1"})
        );
        assert!(up.get("interfaces").is_none());
        assert_eq!(up["routes"].as_array().unwrap().len(), 3);
    }
    // Several IPv4 addresses: 0.2.0 keeps the first.
    let two = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}, {"address": "10.0.1.2/24"}]});
    assert_eq!(
        result::convert(&two, Version::V1_0_0, Version::V0_2_0).unwrap()["ip4"]["ip"],
        "10.0.0.2/24"
    );
    // No address: not expressible in 0.2.0; no cniVersion: read as `from`.
    let none = json!({"interfaces": [{"name": "eth0"}]});
    assert_eq!(
        result::convert(&none, Version::V1_0_0, Version::V0_2_0)
            .unwrap_err()
            .code,
        code::INTERNAL
    );
    assert_eq!(
        result::convert(&none, Version::V1_0_0, Version::V0_3_1).unwrap()["cniVersion"],
        "0.3.1"
    );
    let bad = json!({"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]});
    assert_eq!(
        result::convert(&bad, Version::V1_0_0, Version::V1_1_0)
            .unwrap_err()
            .code,
        code::INTERNAL
    );
}

fn vars(pairs: &[(&str, &str)]) -> CniEnv {
    CniEnv::from_vars(pairs.iter().map(|(k, v)| (*k, OsString::from(v))))
}

#[test]
fn environment_errors() {
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    assert!(vars(&full).check(Cmd::Add).is_ok());
    for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let env: Vec<_> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let e = vars(&env).check(Cmd::Add).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains(missing), "{}", e.msg);
    }
    let no_netns: Vec<_> = full
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    assert!(
        vars(&no_netns).check(Cmd::Del).is_ok(),
        "DEL needs no netns"
    );
    assert!(
        vars(&[("CNI_COMMAND", "GC")]).check(Cmd::Gc).is_err(),
        "GC needs CNI_PATH"
    );
    assert!(vars(&[("CNI_COMMAND", "STATUS")])
        .check(Cmd::Status)
        .is_ok());
    for id in [
        "../x",
        "../../etc/passwd",
        "/abs",
        "a/b",
        ".hidden",
        "-x",
        "_x",
        "a b",
        "a\nb",
        "é",
        "a:b",
    ] {
        let env: Vec<_> = full
            .iter()
            .map(|(k, v)| (*k, if *k == "CNI_CONTAINERID" { id } else { v }))
            .collect();
        let e = vars(&env).check(Cmd::Add).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{id:?}");
        assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
    }
    let long = "a".repeat(256);
    for (k, v) in [
        ("CNI_CONTAINERID", long.as_str()),
        ("CNI_IFNAME", "a-very-long-ifname"),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_IFNAME", ".."),
    ] {
        let env: Vec<_> = full
            .iter()
            .map(|(k2, v2)| (*k2, if *k2 == k { v } else { v2 }))
            .collect();
        let e = vars(&env).check(Cmd::Add).unwrap_err();
        assert!(e.msg.contains(k), "{}", e.msg);
    }
    let ok_ids = ["a", "A.b-c_d", &"f".repeat(64), &"x".repeat(255)];
    for id in ok_ids {
        assert!(weft::cni::env::is_valid_container_id(id), "{id}");
    }
    use std::os::unix::ffi::OsStringExt;
    let env = CniEnv::from_vars([
        ("CNI_COMMAND", OsString::from("ADD")),
        ("CNI_NETNS", OsString::from_vec(vec![0xff])),
    ]);
    assert!(env
        .check(Cmd::Add)
        .unwrap_err()
        .msg
        .contains("CNI_NETNS is not valid UTF-8"));
    for (cmd, text) in [("", "CNI_COMMAND is missing"), ("add", "not one of")] {
        let e = vars(&[("CNI_COMMAND", cmd)]).command().unwrap_err();
        assert!(
            e.msg.contains(text) && e.code == code::INVALID_ENVIRONMENT,
            "{}",
            e.msg
        );
    }
    // A bad delegate timeout falls back to the default (with a warning):
    // runtimes pass their whole environment, and a DEL must not fail on it.
    let mut timeout = full.to_vec();
    timeout.push(("WEFT_CNI_DELEGATE_TIMEOUT", "-1"));
    for cmd in [Cmd::Add, Cmd::Del] {
        let checked = vars(&timeout).check(cmd).unwrap();
        assert_eq!(
            checked.delegate_timeout,
            weft::cni::env::DEFAULT_DELEGATE_TIMEOUT
        );
    }
}

#[test]
fn subnet_outside_network_is_refused_naming_both() {
    let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.99.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let e = weft::cni::subnet_file::SubnetFile::parse(
        text,
        std::path::Path::new("/run/flannel/subnet.env"),
    )
    .unwrap_err();
    assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
    assert!(
        e.msg.contains("FLANNEL_SUBNET=10.99.1.0/24")
            && e.msg.contains("FLANNEL_NETWORK=10.244.0.0/16"),
        "{}",
        e.msg
    );
}

// ---------------------------------------------------------------------------
// Address families: IPv4-only, IPv6-only and dual-stack nodes.

/// flanneld's subnet.env for an IPv6-only cluster: no `FLANNEL_NETWORK` or
/// `FLANNEL_SUBNET` at all.
const V6_ENV: &str = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
/// flanneld's subnet.env for a dual-stack cluster, in flanneld's key order.
const DUAL_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                        FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
                        FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// kube-flannel.yml's conflist entry at `version`.
fn manifest_conf(version: &str) -> Value {
    flannel_netconf(
        version,
        Path::new("/run/flannel/subnet.env"),
        Path::new("/var/lib/cni/flannel"),
        Path::new("/var/lib/cni/networks"),
    )
}

#[test]
fn delegate_gets_one_range_and_one_route_per_family_in_flannels_order() {
    let ipam = |ranges: Value, routes: Value| {
        json!({"dataDir": "/var/lib/cni/networks", "type": "host-local",
               "ranges": ranges, "routes": routes})
    };
    let v4_range = json!([{"subnet": "10.244.1.0/24"}]);
    let v6_range = json!([{"subnet": "fc00:0:0:1::/64"}]);
    let v4_route = json!({"dst": "10.244.0.0/16"});
    let v6_route = json!({"dst": "fc00::/48"});
    for (env, want) in [
        (SEED_ENV, ipam(json!([v4_range]), json!([v4_route]))),
        (V6_ENV, ipam(json!([v6_range]), json!([v6_route]))),
        (
            DUAL_ENV,
            ipam(json!([v4_range, v6_range]), json!([v4_route, v6_route])),
        ),
        // flanneld writes the v4 keys first; the order of the lines does not matter.
        (
            &DUAL_ENV
                .lines()
                .rev()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            ipam(json!([v4_range, v6_range]), json!([v4_route, v6_route])),
        ),
    ] {
        let d = delegate(manifest_conf("1.0.0"), env);
        assert_eq!(
            d,
            json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
                   "hairpinMode": true, "isDefaultGateway": true, "isGateway": true,
                   "ipMasq": false, "mtu": 1450, "ipam": want}),
            "{env}"
        );
    }
    // Routes given in the netconf come first, then one per cluster network
    // of each family (several v4 networks: each, once).
    let mut conf = manifest_conf("0.3.1");
    conf["ipam"]["routes"] = json!([{"dst": "2001:db8::/32", "gw": "fc00:0:0:1::fe"}]);
    let env = DUAL_ENV.replace(
        "FLANNEL_NETWORK=10.244.0.0/16",
        "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16",
    );
    assert_eq!(
        delegate(conf, &env)["ipam"]["routes"],
        json!([{"dst": "2001:db8::/32", "gw": "fc00:0:0:1::fe"},
               {"dst": "10.244.0.0/16"}, {"dst": "10.245.0.0/16"}, {"dst": "fc00::/48"}])
    );
}

#[test]
fn subnet_file_families() {
    let v6 = subnet(V6_ENV);
    assert_eq!((v6.subnet, v6.networks.len()), (None, 0));
    assert_eq!(v6.ipv6_subnet.unwrap().to_string(), "fc00:0:0:1::/64");
    assert_eq!(
        v6.subnets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["fc00:0:0:1::/64"]
    );
    let dual = subnet(DUAL_ENV);
    let show =
        |c: Vec<weft::cni::types::Cidr>| c.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(show(dual.subnets()), ["10.244.1.0/24", "fc00:0:0:1::/64"]);
    assert_eq!(show(dual.all_networks()), ["10.244.0.0/16", "fc00::/48"]);
    let listed = subnet(&V6_ENV.replace("fc00::/48", "fc00::/48,fd00::/48,fc00::/48"));
    assert_eq!(show(listed.all_networks()), ["fc00::/48", "fd00::/48"]);
}

/// Each mismatch is refused with code 7 naming the key(s), and sends the
/// user to the weftd pod.
#[test]
fn subnet_file_family_mismatches_name_the_keys() {
    let tail = "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let v4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n";
    let v6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n";
    let cases: Vec<(String, &str)> = vec![
        // A key without its partner.
        (
            format!("{v4}FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n{tail}"),
            "missing FLANNEL_IPV6_NETWORK (FLANNEL_IPV6_SUBNET is set)",
        ),
        (
            format!("FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n{tail}"),
            "missing FLANNEL_IPV6_NETWORK (FLANNEL_IPV6_SUBNET is set)",
        ),
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\n{tail}"),
            "missing FLANNEL_IPV6_SUBNET (FLANNEL_IPV6_NETWORK is set)",
        ),
        (
            format!("FLANNEL_SUBNET=10.244.1.1/24\n{v6}{tail}"),
            "missing FLANNEL_NETWORK (FLANNEL_SUBNET is set)",
        ),
        (
            format!("FLANNEL_NETWORK=10.244.0.0/16\n{v6}{tail}"),
            "missing FLANNEL_SUBNET (FLANNEL_NETWORK is set)",
        ),
        // A value of the other family.
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=10.244.1.1/24\n{tail}"),
            "line 4: FLANNEL_IPV6_SUBNET=\"10.244.1.1/24\" is not IPv6",
        ),
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48,10.0.0.0/8\n{tail}"),
            "line 3: FLANNEL_IPV6_NETWORK=\"fc00::/48,10.0.0.0/8\" is not IPv6",
        ),
        (
            format!("FLANNEL_NETWORK=fc00::/48\nFLANNEL_SUBNET=10.244.1.1/24\n{tail}"),
            "line 1: FLANNEL_NETWORK=\"fc00::/48\" is not IPv4",
        ),
        (
            format!("FLANNEL_IPV6_NETWORK=fc00::/129\n{tail}"),
            "line 1: FLANNEL_IPV6_NETWORK=\"fc00::/129\" is not a valid CIDR",
        ),
        // A subnet outside its network.
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n{tail}"),
            "FLANNEL_IPV6_SUBNET=fd00:0:0:1::/64 is not inside FLANNEL_IPV6_NETWORK=fc00::/48",
        ),
        (
            format!("FLANNEL_IPV6_NETWORK=fc00::/64\nFLANNEL_IPV6_SUBNET=fc00::1/48\n{tail}"),
            "FLANNEL_IPV6_SUBNET=fc00::/48 is not inside FLANNEL_IPV6_NETWORK=fc00::/64",
        ),
        // IPv6 needs an MTU of at least 1280.
        (
            format!("{v6}FLANNEL_MTU=1200\nFLANNEL_IPMASQ=true\n"),
            "FLANNEL_MTU=1200 is below IPv6's minimum MTU (1280), but FLANNEL_IPV6_SUBNET=fc00:0:0:1::/64 is set",
        ),
    ];
    for (text, want) in &cases {
        let e = SubnetFile::parse(text, Path::new("/run/flannel/subnet.env")).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "{text}");
        assert!(
            e.msg.contains(want) && e.msg.contains("/run/flannel/subnet.env"),
            "{text}\nwant: {want}\ngot:  {}",
            e.msg
        );
        assert!(e.details.contains("weftd pod"), "{}", e.details);
    }
    // A v4-only file with a small MTU is fine.
    assert_eq!(subnet(&SEED_ENV.replace("MTU=1450", "MTU=576")).mtu, 576);
}

/// What the bridge plugin (1.x, `isDefaultGateway`) returns for a
/// dual-stack pod: host-local's addresses and cluster routes, then one
/// default route per family.
const DUAL_RESULT: &str = r#"{"cniVersion":"1.0.0",
 "interfaces":[{"name":"cni0","mac":"aa:00:00:00:00:01"},{"name":"veth1","mac":"aa:00:00:00:00:02"},
               {"name":"eth0","mac":"aa:00:00:00:00:03","sandbox":"/var/run/netns/pod"}],
 "ips":[{"interface":2,"address":"10.244.1.7/24","gateway":"10.244.1.1"},
        {"interface":2,"address":"fc00:0:0:1::7/64","gateway":"fc00:0:0:1::1"}],
 "routes":[{"dst":"10.244.0.0/16"},{"dst":"fc00::/48"},
           {"dst":"0.0.0.0/0","gw":"10.244.1.1"},{"dst":"::/0","gw":"fc00:0:0:1::1"}],
 "dns":{}}"#;

#[test]
fn dual_stack_result_in_every_version() {
    let r: Value = serde_json::from_str(DUAL_RESULT).unwrap();
    let routes = r["routes"].clone();
    for v in Version::ALL {
        let out = result::convert(&r, Version::V1_0_0, v).unwrap();
        assert_eq!(out["cniVersion"], v.as_str());
        match v {
            Version::V0_1_0 | Version::V0_2_0 => assert_eq!(
                out,
                json!({"cniVersion": v.as_str(),
                       "ip4": {"ip": "10.244.1.7/24", "gateway": "10.244.1.1",
                               "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]},
                       "ip6": {"ip": "fc00:0:0:1::7/64", "gateway": "fc00:0:0:1::1",
                               "routes": [{"dst": "fc00::/48"}, {"dst": "::/0", "gw": "fc00:0:0:1::1"}]},
                       "dns": {}}),
                "{v}"
            ),
            _ => {
                let versioned = v < Version::V1_0_0;
                let ip = |version: &str, address: &str, gateway: &str| {
                    let mut ip = json!({"interface": 2, "address": address, "gateway": gateway});
                    if versioned {
                        ip["version"] = json!(version);
                    }
                    ip
                };
                assert_eq!(
                    out["ips"],
                    json!([
                        ip("4", "10.244.1.7/24", "10.244.1.1"),
                        ip("6", "fc00:0:0:1::7/64", "fc00:0:0:1::1")
                    ]),
                    "{v}"
                );
                assert_eq!(out["routes"], routes, "{v}");
                assert_eq!(out["interfaces"], r["interfaces"], "{v}");
            }
        }
        // Read back in its own version and rendered as 1.0.0: nothing of
        // either family is lost (0.x.0's ip4/ip6 have no interfaces).
        let back = result::convert(&out, v, Version::V1_0_0).unwrap();
        let ips: Vec<(&Value, &Value)> = back["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| (&ip["address"], &ip["gateway"]))
            .collect();
        assert_eq!(
            ips,
            [
                (&json!("10.244.1.7/24"), &json!("10.244.1.1")),
                (&json!("fc00:0:0:1::7/64"), &json!("fc00:0:0:1::1"))
            ],
            "{v}"
        );
        let mut got: Vec<String> = back["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        let mut want: Vec<String> = routes
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{v}");
    }
    // An IPv6-only result: 0.2.0 has ip6 and no ip4.
    let v6_only = json!({"cniVersion": "1.0.0",
        "ips": [{"address": "fc00:0:0:1::7/64", "gateway": "fc00:0:0:1::1"}],
        "routes": [{"dst": "fc00::/48"}, {"dst": "::/0", "gw": "fc00:0:0:1::1"}]});
    let out = result::convert(&v6_only, Version::V1_0_0, Version::V0_2_0).unwrap();
    assert!(out.get("ip4").is_none(), "{out}");
    assert_eq!(out["ip6"]["routes"].as_array().unwrap().len(), 2);
}

#[test]
fn check_gives_each_route_its_own_familys_gateway() {
    let mut r =
        weft::cni::CniResult::parse_bytes(DUAL_RESULT.as_bytes(), Version::V1_0_0, "r").unwrap();
    weft::cni::commands::fill_route_gateways(&mut r);
    let gws: Vec<(String, String)> = r
        .routes
        .iter()
        .map(|rt| (rt.dst.to_string(), rt.gw.unwrap().to_string()))
        .collect();
    assert_eq!(
        gws,
        [
            ("10.244.0.0/16".to_owned(), "10.244.1.1".to_owned()),
            ("fc00::/48".to_owned(), "fc00:0:0:1::1".to_owned()),
            ("0.0.0.0/0".to_owned(), "10.244.1.1".to_owned()),
            ("::/0".to_owned(), "fc00:0:0:1::1".to_owned()),
        ]
    );
}

// ---------------------------------------------------------------------------
// The binary, with a fake delegate.

/// A scratch directory with a subnet file, a fake `bridge` plugin in
/// `bin/` that logs its calls and answers per the `mode` file (`dual`:
/// with [`DUAL_RESULT`]), and the
/// netconf pointing at them.
struct Lab {
    dir: tempfile::TempDir,
}

const FAKE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"10.244.0.0/16"}],"dns":{}}"#;

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("subnet.env"), SEED_ENV).unwrap();
        std::fs::write(root.join("mode"), "ok").unwrap();
        let script = format!(
            r#"#!/bin/sh
d={root}
input=$(cat)
echo "$CNI_COMMAND ${{CNI_CONTAINERID:-none}} ${{CNI_IFNAME:-none}} ${{CNI_NETNS:-none}}" >> $d/calls
printf '%s' "$input" > $d/stdin.$CNI_COMMAND
mode=$(cat $d/mode)
if [ "$CNI_COMMAND" = VERSION ]; then echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}'; exit 0; fi
case $mode in
  fail-add) if [ "$CNI_COMMAND" = ADD ]; then echo '{{"code":7,"msg":"refused"}}'; exit 1; fi;;
  fail-json) echo '{{"code":11,"msg":"try later from the delegate","details":"d"}}'; exit 1;;
  fail-garbage) echo 'panic: oops'; exit 2;;
  sleep) sleep 30;;
esac
if [ "$CNI_COMMAND" = ADD ]; then
  if [ "$mode" = dual ]; then echo '{DUAL_RESULT}'; else echo '{FAKE_RESULT}'; fi
fi
"#,
            root = root.display()
        );
        for plugin in ["bridge", "host-local"] {
            let path = root.join("bin").join(plugin);
            std::fs::write(&path, &script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Lab { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn netconf(&self, version: &str) -> Value {
        let root = self.root();
        flannel_netconf(
            version,
            &root.join("subnet.env"),
            &root.join("data"),
            &root.join("ipam"),
        )
    }

    fn run(&self, command: &str, id: &str, stdin: &Value, extra: &[(&str, &str)]) -> (Value, bool) {
        self.run_raw(command, id, stdin.to_string().as_bytes(), extra)
    }

    fn run_raw(
        &self,
        command: &str,
        id: &str,
        stdin: &[u8],
        extra: &[(&str, &str)],
    ) -> (Value, bool) {
        use std::io::Write;
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/pod")
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                format!("/nonexistent:{}", self.root().join("bin").display()),
            )
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(1), "exit status 1 on error");
        }
        (value, out.status.success())
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.root().join("calls")).unwrap_or_default()
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.root().join("mode"), mode).unwrap();
    }

    /// Every path under the lab (relative), to see what was written.
    fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
                if p.is_dir() {
                    walk(&p, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root(), self.root(), &mut out);
        out.sort();
        out
    }
}

#[test]
fn add_saves_then_delegates_and_converts_for_each_version() {
    let lab = Lab::new();
    for v in weft::cni::version::SUPPORTED {
        let id = format!("ctr-{}", v.replace('.', ""));
        let (out, ok) = lab.run("ADD", &id, &lab.netconf(v), &[]);
        assert!(ok, "{v}: {out}");
        assert_eq!(out["cniVersion"], v);
        let want = result::convert(
            &serde_json::from_str(FAKE_RESULT).unwrap(),
            Version::V1_0_0,
            Version::parse(v).unwrap(),
        )
        .unwrap();
        assert_eq!(out, want, "{v}");
        let saved = std::fs::read(lab.root().join("data").join(&id)).unwrap();
        let given = std::fs::read(lab.root().join("stdin.ADD")).unwrap();
        assert_eq!(
            saved, given,
            "the delegate got exactly the saved configuration"
        );
        let saved: Value = serde_json::from_slice(&saved).unwrap();
        assert_eq!(saved["cniVersion"], if v == "1.1.0" { "1.0.0" } else { v });
        assert_eq!(saved["name"], "cbr0");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&lab.root().join("data")), 0o700);
    assert_eq!(mode(&lab.root().join("data/ctr-110")), 0o600);
    assert!(lab.calls().contains("ADD ctr-110 eth0 /var/run/netns/pod"));
    // DEL: the delegate gets the saved file; the file goes; again: nothing to do.
    let (_, ok) = lab.run("DEL", "ctr-110", &lab.netconf("1.1.0"), &[]);
    assert!(ok);
    assert!(!lab.root().join("data/ctr-110").exists());
    assert_eq!(lab.calls().matches("DEL ctr-110").count(), 1);
    let (out, ok) = lab.run("DEL", "ctr-110", &lab.netconf("1.1.0"), &[]);
    assert!(ok && out.is_null());
    assert_eq!(
        lab.calls().matches("DEL ctr-110").count(),
        1,
        "no saved file: no delegate call"
    );
    // A failing delegate DEL keeps the file for a retry.
    lab.set_mode("fail-json");
    let (out, ok) = lab.run("DEL", "ctr-100", &lab.netconf("1.0.0"), &[]);
    assert!(!ok);
    assert_eq!(
        (out["code"].clone(), out["msg"].clone()),
        (json!(11), json!("try later from the delegate"))
    );
    assert!(lab.root().join("data/ctr-100").exists());
    // Unreadable saved file: DEL succeeds (as flannel).
    std::fs::write(lab.root().join("data/ctr-junk"), "junk").unwrap();
    assert!(lab.run("DEL", "ctr-junk", &lab.netconf("1.0.0"), &[]).1);
}

/// (b) A failed ADD is undone: the delegate's DEL with the same
/// configuration, then the saved file goes. If that DEL fails too, the file
/// stays for the runtime's DEL.
#[test]
fn a_failed_add_is_undone() {
    let lab = Lab::new();
    lab.set_mode("fail-add");
    let (out, ok) = lab.run("ADD", "c1", &lab.netconf("1.0.0"), &[]);
    assert!(!ok, "{out}");
    assert_eq!(out["msg"], "refused");
    let calls = std::fs::read_to_string(lab.root().join("calls")).unwrap();
    assert!(
        calls.contains("ADD c1") && calls.contains("DEL c1"),
        "{calls}"
    );
    assert_eq!(
        std::fs::read(lab.root().join("stdin.DEL")).unwrap(),
        std::fs::read(lab.root().join("stdin.ADD")).unwrap(),
        "the undo DEL got the ADD's configuration"
    );
    assert!(
        !lab.root().join("data/c1").exists(),
        "the saved file is gone"
    );
    lab.set_mode("fail-json");
    let (_, ok) = lab.run("ADD", "c2", &lab.netconf("1.0.0"), &[]);
    assert!(!ok);
    assert!(
        lab.root().join("data/c2").exists(),
        "the undo DEL failed: the file stays for the runtime's DEL"
    );
}

#[test]
fn delegate_failures_pass_through_or_are_reported() {
    let lab = Lab::new();
    lab.set_mode("fail-json");
    let (out, ok) = lab.run("ADD", "c1", &lab.netconf("0.3.1"), &[]);
    assert!(!ok);
    assert_eq!(
        out,
        json!({"cniVersion": "0.3.1", "code": 11, "msg": "try later from the delegate", "details": "d"})
    );
    lab.set_mode("fail-garbage");
    let (out, _) = lab.run("ADD", "c1", &lab.netconf("1.0.0"), &[]);
    assert_eq!(out["code"], code::DELEGATE_FAILED);
    assert!(
        out["details"].as_str().unwrap().contains("panic: oops"),
        "{out}"
    );
    lab.set_mode("sleep");
    let t0 = Instant::now();
    let (out, _) = lab.run(
        "ADD",
        "c1",
        &lab.netconf("1.0.0"),
        &[("WEFT_CNI_DELEGATE_TIMEOUT", "0.5")],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the hung delegate was killed"
    );
    assert_eq!(out["code"], code::DELEGATE_FAILED);
    assert!(
        out["msg"].as_str().unwrap().contains("did not finish"),
        "{out}"
    );
    // Not in CNI_PATH: nothing saved.
    let mut conf = lab.netconf("1.0.0");
    conf["delegate"]["type"] = json!("macvlan");
    let (out, _) = lab.run("ADD", "c2", &conf, &[]);
    assert_eq!(out["code"], code::INVALID_NETWORK_CONFIG);
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("failed to find plugin \"macvlan\""),
        "{out}"
    );
    assert!(!lab.root().join("data/c2").exists());
}

#[test]
fn bad_input_gets_a_cni_error_and_writes_nothing() {
    let lab = Lab::new();
    let before = lab.tree();
    for id in [
        "../../escape",
        "../data2",
        "/tmp/abs",
        ".",
        "..",
        "a/../../b",
    ] {
        let (out, ok) = lab.run("ADD", id, &lab.netconf("1.0.0"), &[]);
        assert!(!ok);
        assert_eq!(out["code"], code::INVALID_ENVIRONMENT, "{id}: {out}");
        assert!(out["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
    }
    assert_eq!(lab.tree(), before, "nothing written");
    assert!(!lab.root().parent().unwrap().join("escape").exists());
    assert_eq!(lab.calls(), "", "no delegate ran");
    let inputs: &[&[u8]] = &[
        b"",
        b"{",
        b"null",
        b"\"str\"",
        b"{\"name\": \"n\", \"cniVersion\": \"9.9.9\"}",
        &[0xff, 0xfe, 0x00],
        b"{\"name\":{\"a\":[1,2,{}]}}",
    ];
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        for input in inputs {
            let (out, ok) = lab.run_raw(cmd, "c1", input, &[]);
            assert!(
                !ok && out["code"].as_u64().unwrap() > 0 && out["msg"].is_string(),
                "{cmd}: {out}"
            );
        }
    }
    let (out, _) = lab.run("FROB", "c1", &lab.netconf("1.0.0"), &[]);
    assert_eq!(out["code"], code::INVALID_ENVIRONMENT);
    let (out, _) = lab.run("ADD", "c1", &lab.netconf("0.5.0"), &[]);
    assert_eq!(
        (out["code"].clone(), out["cniVersion"].clone()),
        (json!(1), json!("1.1.0"))
    );
    // A broken subnet file: the user is told to check weftd.
    std::fs::write(
        lab.root().join("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\n",
    )
    .unwrap();
    let (out, _) = lab.run("ADD", "c1", &lab.netconf("1.0.0"), &[]);
    assert_eq!(out["code"], code::INVALID_NETWORK_CONFIG);
    assert!(
        out["msg"].as_str().unwrap().contains("FLANNEL_SUBNET")
            && out["details"].as_str().unwrap().contains("weftd")
    );
    std::fs::remove_file(lab.root().join("subnet.env")).unwrap();
    let (out, _) = lab.run("ADD", "c1", &lab.netconf("1.0.0"), &[]);
    assert_eq!(out["code"], code::TRY_AGAIN_LATER);
    assert_eq!(lab.calls(), "", "no delegate ran");
    let (out, ok) = lab.run_raw("VERSION", "", b"", &[]);
    assert!(ok && out["supportedVersions"].as_array().unwrap().len() == 7);
}

#[test]
fn check_status_and_gc_with_a_fake_delegate() {
    let lab = Lab::new();
    let conf = lab.netconf("1.1.0");
    let (added, ok) = lab.run("ADD", "c1", &conf, &[]);
    assert!(ok);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = added.clone();
    assert!(lab.run("CHECK", "c1", &with_prev, &[]).1);
    let sent: Value =
        serde_json::from_slice(&std::fs::read(lab.root().join("stdin.CHECK")).unwrap()).unwrap();
    assert_eq!(sent["cniVersion"], "1.0.0");
    assert_eq!(sent["prevResult"]["cniVersion"], "1.0.0");
    assert_eq!(
        sent["prevResult"]["routes"][0],
        json!({"dst": "10.244.0.0/16", "gw": "10.244.1.1"}),
        "as the bridge programmed it"
    );
    assert_eq!(sent["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    let mut old = lab.netconf("0.3.1");
    old["prevResult"] = added.clone();
    assert_eq!(
        lab.run("CHECK", "c1", &old, &[]).0["code"],
        code::INCOMPATIBLE_VERSION
    );
    assert!(lab.run("CHECK", "c1", &conf, &[]).0["msg"]
        .as_str()
        .unwrap()
        .contains("prevResult"));
    assert_eq!(
        lab.run("CHECK", "nope", &with_prev, &[]).0["code"],
        code::UNKNOWN_CONTAINER
    );
    std::fs::write(
        lab.root().join("subnet.env"),
        SEED_ENV.replace("10.244.1.1/24", "10.244.9.1/24"),
    )
    .unwrap();
    assert_eq!(
        lab.run("CHECK", "c1", &with_prev, &[]).0["code"],
        code::SUBNET_CHANGED
    );

    // STATUS: 1.1.0 only; not available without a valid subnet file or plugins.
    assert!(lab.run("STATUS", "", &conf, &[]).1);
    assert_eq!(
        lab.run("STATUS", "", &lab.netconf("1.0.0"), &[]).0["code"],
        code::INCOMPATIBLE_VERSION
    );
    let mut no_ipam = conf.clone();
    no_ipam["ipam"]["type"] = json!("dhcp");
    assert_eq!(
        lab.run("STATUS", "", &no_ipam, &[]).0["code"],
        code::NOT_AVAILABLE
    );
    std::fs::remove_file(lab.root().join("subnet.env")).unwrap();
    let (out, ok) = lab.run("STATUS", "", &conf, &[]);
    assert!(!ok && out["code"] == code::NOT_AVAILABLE, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("subnet.env"));
    std::fs::write(lab.root().join("subnet.env"), SEED_ENV).unwrap();

    // GC: c1 valid; c2 stale (saved + reservation); a ghost reservation
    // without a saved file; another network's saved file is left alone.
    assert!(lab.run("ADD", "c2", &conf, &[]).1);
    let ipam = lab.root().join("ipam/cbr0");
    std::fs::create_dir_all(&ipam).unwrap();
    for (ip, content) in [
        ("10.244.1.2", "c1\r\neth0"),
        ("10.244.1.3", "c2\r\nnet1"),
        ("10.244.1.4", "ghost"),
        ("10.244.1.5", ""),
    ] {
        std::fs::write(ipam.join(ip), content).unwrap();
    }
    std::fs::write(ipam.join("last_reserved_ip.0"), "10.244.1.5").unwrap();
    std::fs::write(
        lab.root().join("data/other"),
        r#"{"name":"other-net","type":"bridge"}"#,
    )
    .unwrap();
    let mut gc = conf.clone();
    assert_eq!(
        lab.run("GC", "", &gc, &[]).0["code"],
        code::INVALID_NETWORK_CONFIG,
        "needs valid-attachments"
    );
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (out, ok) = lab.run("GC", "", &gc, &[]);
    assert!(ok, "{out}");
    assert!(
        lab.calls().contains("DEL c2 net1 none"),
        "stale c2 deleted with its ifname, no netns:\n{}",
        lab.calls()
    );
    assert!(!lab.root().join("data/c2").exists());
    assert!(lab.root().join("data/c1").exists() && lab.root().join("data/other").exists());
    let mut left: Vec<_> = std::fs::read_dir(&ipam)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["10.244.1.2", "10.244.1.5", "last_reserved_ip.0"],
        "a reservation being written (empty) is kept"
    );
    assert!(
        !lab.calls().contains("GC "),
        "the fake speaks only up to 1.0.0: no delegate GC"
    );
    assert_eq!(
        lab.run("GC", "", &lab.netconf("1.0.0"), &[]).0["code"],
        code::INCOMPATIBLE_VERSION
    );
}

/// Dual-stack through the binary: the delegate gets both ranges and both
/// cluster routes, every version's result carries both addresses, CHECK
/// hands the delegate each route with its own family's gateway, and GC
/// releases both of a stale attachment's reservations.
#[test]
fn dual_stack_add_check_gc_with_a_fake_delegate() {
    let lab = Lab::new();
    std::fs::write(lab.root().join("subnet.env"), DUAL_ENV).unwrap();
    lab.set_mode("dual");
    for v in weft::cni::version::SUPPORTED {
        let id = format!("dual-{}", v.replace('.', ""));
        let (out, ok) = lab.run("ADD", &id, &lab.netconf(v), &[]);
        assert!(ok, "{v}: {out}");
        let want = result::convert(
            &serde_json::from_str(DUAL_RESULT).unwrap(),
            Version::V1_0_0,
            Version::parse(v).unwrap(),
        )
        .unwrap();
        assert_eq!(out, want, "{v}");
        if v.starts_with("0.1") || v.starts_with("0.2") {
            assert!(
                out["ip4"].is_object() && out["ip6"].is_object(),
                "{v}: {out}"
            );
        } else {
            assert_eq!(out["ips"].as_array().unwrap().len(), 2, "{v}: {out}");
        }
        let sent: Value =
            serde_json::from_slice(&std::fs::read(lab.root().join("stdin.ADD")).unwrap()).unwrap();
        assert_eq!(
            sent["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fc00:0:0:1::/64"}]])
        );
        assert_eq!(
            sent["ipam"]["routes"],
            json!([{"dst": "10.244.0.0/16"}, {"dst": "fc00::/48"}])
        );
    }

    let conf = lab.netconf("1.1.0");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = lab.run("ADD", "c1", &conf, &[]).0;
    let (out, ok) = lab.run("CHECK", "c1", &with_prev, &[]);
    assert!(ok, "{out}");
    let sent: Value =
        serde_json::from_slice(&std::fs::read(lab.root().join("stdin.CHECK")).unwrap()).unwrap();
    assert_eq!(
        sent["prevResult"]["routes"],
        json!([{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}, {"dst": "fc00::/48", "gw": "fc00:0:0:1::1"},
               {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0", "gw": "fc00:0:0:1::1"}])
    );
    // The node lost its IPv6 subnet: the container's addresses are stale.
    std::fs::write(lab.root().join("subnet.env"), SEED_ENV).unwrap();
    let (out, _) = lab.run("CHECK", "c1", &with_prev, &[]);
    assert_eq!(out["code"], code::SUBNET_CHANGED, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("fc00:0:0:1::/64"),
        "{out}"
    );
    std::fs::write(lab.root().join("subnet.env"), DUAL_ENV).unwrap();

    // GC: c1 is valid; the dual-* attachments are stale, each with a v4
    // and a v6 reservation (host-local's file names).
    let ipam = lab.root().join("ipam/cbr0");
    std::fs::create_dir_all(&ipam).unwrap();
    let mut kept = Vec::new();
    for (i, v) in weft::cni::version::SUPPORTED.iter().enumerate() {
        let id = format!("dual-{}", v.replace('.', ""));
        std::fs::write(
            ipam.join(format!("10.244.1.{}", i + 10)),
            format!("{id}\r\neth0"),
        )
        .unwrap();
        std::fs::write(
            ipam.join(format!("fc00:0:0:1::{}", i + 10)),
            format!("{id}\r\neth0"),
        )
        .unwrap();
    }
    for ip in ["10.244.1.2", "fc00:0:0:1::2"] {
        std::fs::write(ipam.join(ip), "c1\r\neth0").unwrap();
        kept.push(ip.to_owned());
    }
    for f in ["last_reserved_ip.0", "last_reserved_ip.1"] {
        std::fs::write(ipam.join(f), "x").unwrap();
        kept.push(f.to_owned());
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (out, ok) = lab.run("GC", "", &gc, &[]);
    assert!(ok, "{out}");
    let mut left: Vec<String> = std::fs::read_dir(&ipam)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    kept.sort();
    assert_eq!(left, kept, "both families' stale reservations are released");
    let saved: Vec<String> = std::fs::read_dir(lab.root().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(saved, ["c1"]);
}
