//! The manifests under manifests/: every document parses into its
//! k8s-openapi type with no field the type does not know, and what they say
//! agrees with weftd (flags, paths, ports, rights) and with flannel's layout.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use weft::config::{Flags, NetConf};
use weft_integration::kube_api::FLANNEL_RULES;

fn manifest(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(variant)
        .join("kube-weft.yml")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every field of `original` survives a round trip through the typed object
/// (so the type knew it), with the same value.
fn assert_known(original: &Value, typed: &Value, at: &str) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let there = t.get(k).unwrap_or_else(|| panic!("unknown field {at}.{k}"));
                assert_known(v, there, &format!("{at}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            assert_eq!(o.len(), t.len(), "{at}");
            for (i, (a, b)) in o.iter().zip(t).enumerate() {
                assert_known(a, b, &format!("{at}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    assert_known(
        doc,
        &serde_json::to_value(&t).unwrap(),
        doc["kind"].as_str().unwrap_or("?"),
    );
    t
}

struct Parsed {
    role: ClusterRole,
    binding: ClusterRoleBinding,
    config: ConfigMap,
    ds: DaemonSet,
    sa: ServiceAccount,
}

fn parse(variant: &str) -> Parsed {
    let (mut role, mut binding, mut config, mut ds, mut sa, mut ns) =
        (None, None, None, None, None, None);
    for doc in documents(&manifest(variant)) {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => ns = Some(typed::<Namespace>(&doc)),
            "ServiceAccount" => sa = Some(typed::<ServiceAccount>(&doc)),
            "ClusterRole" => role = Some(typed::<ClusterRole>(&doc)),
            "ClusterRoleBinding" => binding = Some(typed::<ClusterRoleBinding>(&doc)),
            "ConfigMap" => config = Some(typed::<ConfigMap>(&doc)),
            "DaemonSet" => ds = Some(typed::<DaemonSet>(&doc)),
            other => panic!("unexpected kind {other}"),
        }
    }
    let ns = ns.expect("a Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some("kube-flannel"));
    Parsed {
        role: role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        config: config.expect("a ConfigMap"),
        ds: ds.expect("a DaemonSet"),
        sa: sa.expect("a ServiceAccount"),
    }
}

fn mount_path<'a>(c: &'a Container, volume: &str) -> &'a str {
    c.volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == volume)
        .map(|m| m.mount_path.as_str())
        .unwrap_or_else(|| panic!("{} does not mount {volume}", c.name))
}

fn check(variant: &str, nftables: bool) {
    let p = parse(variant);
    // Rights: exactly flannel's, the ones the end-to-end tests run weftd with.
    let rules: Vec<Value> = serde_json::to_value(p.role.rules.as_ref().unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let want: Vec<Value> = FLANNEL_RULES.iter().map(|r| r.to_json()).collect();
    assert_eq!(rules.len(), want.len());
    for (r, w) in rules.iter().zip(&want) {
        for key in ["apiGroups", "resources", "verbs"] {
            assert_eq!(r[key], w[key], "{variant}: rule {key}");
        }
    }
    assert_eq!(
        p.binding.role_ref.name,
        p.role.metadata.name.clone().unwrap()
    );
    let subject = &p.binding.subjects.as_ref().unwrap()[0];
    let spec = p.ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(Some(subject.name.as_str()), p.sa.metadata.name.as_deref());
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(subject.name.as_str())
    );
    assert_eq!(spec.host_network, Some(true));

    // net-conf.json is weft's to parse; cni-conf.json is flannel's conflist.
    let data = p.config.data.as_ref().unwrap();
    let conf = NetConf::parse(&data["net-conf.json"]).unwrap();
    assert_eq!(conf.enable_nftables, nftables, "{variant}");
    assert!(conf.ignored.is_empty(), "{:?}", conf.ignored);
    let cni: Value = serde_json::from_str(&data["cni-conf.json"]).unwrap();
    assert_eq!(cni["plugins"][0]["type"], "flannel");

    // The agent: its flags parse as weftd's, its probes hit weftd's health port.
    let agent = &spec.containers[0];
    let mut argv = vec!["weftd".to_string()];
    argv.extend(agent.args.clone().unwrap());
    let flags = Flags::parse_with_env(argv, Vec::new()).unwrap();
    assert!(flags.kube_subnet_mgr && flags.ip_masq);
    // Prometheus scrapes /metrics on weftd's health port.
    let annotations =
        p.ds.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        flags.healthz_port.to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // Updates start the new pod beside the old one, which hands over.
    assert!(flags.take_over, "--take-over");
    let rolling =
        p.ds.spec
            .as_ref()
            .unwrap()
            .update_strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
    assert_eq!(
        serde_json::to_value(&rolling.max_surge).unwrap(),
        Value::from(1),
        "maxSurge"
    );
    assert_eq!(
        serde_json::to_value(&rolling.max_unavailable).unwrap(),
        Value::from(0),
        "maxUnavailable"
    );
    assert_eq!(agent.command.as_ref().unwrap()[0], "/usr/local/bin/weftd");
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            Value::from(flags.healthz_port)
        );
    }
    let caps = agent
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .clone()
        .unwrap();
    assert_eq!(caps, vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]);
    let env: Vec<&str> = agent
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        env,
        vec!["POD_NAME", "POD_NAMESPACE"],
        "weftd finds its node through its pod, as flanneld"
    );
    // The paths weftd uses by default are the ones mounted.
    assert_eq!(
        Path::new(mount_path(agent, "run")),
        flags.subnet_file.parent().unwrap()
    );
    assert_eq!(
        Path::new(mount_path(agent, "flannel-cfg").trim_end_matches('/')),
        flags.net_config_path.parent().unwrap()
    );
    let volumes = spec.volumes.as_ref().unwrap();
    let host = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    assert_eq!(host("run").as_deref(), Some("/run/flannel"));
    if nftables {
        assert!(
            host("xtables-lock").is_none(),
            "nftables needs no xtables lock"
        );
    } else {
        assert_eq!(mount_path(agent, "xtables-lock"), "/run/xtables.lock");
        assert_eq!(host("xtables-lock").as_deref(), Some("/run/xtables.lock"));
    }

    // The init containers install the CNI plugin as flannel's and the conflist where flannel puts it.
    let init = spec.init_containers.as_ref().unwrap();
    let script = |name: &str| {
        init.iter()
            .find(|c| c.name == name)
            .unwrap()
            .command
            .as_ref()
            .unwrap()
            .join(" ")
    };
    assert!(
        script("install-cni-plugin").contains("/usr/local/bin/weft-cni")
            && script("install-cni-plugin").ends_with("/opt/cni/bin/flannel")
    );
    assert!(script("install-cni").ends_with("/etc/cni/net.d/10-flannel.conflist"));
    assert_eq!(host("cni-plugin").as_deref(), Some("/opt/cni/bin"));
    assert_eq!(host("cni").as_deref(), Some("/etc/cni/net.d"));
    assert!(mount_path(&init[1], "flannel-cfg").starts_with("/etc/kube-flannel"));
}

#[test]
fn legacy_manifest_is_valid_and_agrees_with_weftd() {
    check("legacy", false);
}

#[test]
fn nftables_manifest_is_valid_and_agrees_with_weftd() {
    check("nftables", true);
}

#[test]
fn an_unknown_field_is_caught() {
    let mut doc: Value = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automountServiceAcountToken": true});
    let r = std::panic::catch_unwind(|| typed::<ServiceAccount>(&doc));
    assert!(r.is_err(), "a misspelt field must fail the check");
    doc.as_object_mut()
        .unwrap()
        .remove("automountServiceAcountToken");
    typed::<ServiceAccount>(&doc);
}
