//! Flag / environment precedence (its own test binary: it sets process
//! environment variables, which clap reads).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::ffi::OsString;
use std::path::PathBuf;

use weft::config::Flags;

#[test]
fn command_line_beats_environment_beats_default() {
    std::env::set_var("FLANNELD_IFACE", "eth9");
    std::env::set_var("FLANNELD_IP_MASQ", "true");
    std::env::set_var("FLANNELD_SUBNET_FILE", "/tmp/from-env.env");
    std::env::set_var("FLANNELD_HEALTHZ_PORT", "8081");
    std::env::set_var("FLANNELD_IPTABLES_FORWARD_RULES", "false");
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();

    // Environment over defaults.
    let f = Flags::parse_with_env(["weftd", "--kube-subnet-mgr"], env.clone()).unwrap();
    assert_eq!(f.iface, vec!["eth9".to_string()]);
    assert!(f.ip_masq);
    assert_eq!(f.subnet_file, PathBuf::from("/tmp/from-env.env"));
    assert_eq!(f.healthz_port, 8081);
    assert!(!f.iptables_forward_rules);
    assert_eq!(
        f.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json"),
        "default where neither is given"
    );

    // Command line over environment.
    let f = Flags::parse_with_env(
        [
            "weftd",
            "--iface=eth1",
            "--ip-masq=false",
            "--subnet-file=/tmp/cli.env",
            "--healthz-port",
            "9000",
            "--iptables-forward-rules",
        ],
        env,
    )
    .unwrap();
    assert_eq!(f.iface, vec!["eth1".to_string()]);
    assert!(!f.ip_masq);
    assert_eq!(f.subnet_file, PathBuf::from("/tmp/cli.env"));
    assert_eq!(f.healthz_port, 9000);
    assert!(f.iptables_forward_rules);
}
