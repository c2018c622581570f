//! weftd's command line: flanneld's flags, names and defaults, each also
//! read from its `FLANNELD_<NAME>` environment variable (a flag given on the
//! command line wins over the environment, which wins over the default).
//!
//! flanneld uses Go's flag syntax; weft accepts it too: `-flag` as well as
//! `--flag`, and booleans as `--ip-masq` or `--ip-masq=false`. A flanneld
//! flag that weft does not support (the etcd subnet manager, IPv6, …) is an
//! error that says so, never silently ignored.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use weft_nat::NatMode;

/// weftd: a drop-in replacement for flanneld (Kubernetes subnet manager mode).
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(name = "weftd", version, about, long_about = None)]
pub struct Flags {
    /// Use the Kubernetes API for subnets (the only mode weft has; flanneld's default is etcd).
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub kube_subnet_mgr: bool,

    /// kubeconfig file (default: in-cluster service account, or $KUBECONFIG).
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,

    /// Kubernetes API server URL (overrides the kubeconfig's).
    #[arg(long, env = "FLANNELD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,

    /// Prefix of the Node annotations.
    #[arg(
        long,
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
        default_value = "flannel.alpha.coreos.com"
    )]
    pub kube_annotation_prefix: String,

    /// Path of net-conf.json.
    #[arg(
        long,
        env = "FLANNELD_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,

    /// Interface to use (name or IP), repeatable; the first that exists wins.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Regex on interface IPs, then names, repeatable; after --iface.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,

    /// Use the interface (and source address) of the route to this IP.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,

    /// IP to advertise to other nodes (default: the interface's).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// IPv6 address to advertise to other nodes (default: the interface's).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Masquerade traffic leaving the cluster network (install the SNAT rules).
    #[arg(long, env = "FLANNELD_IP_MASQ", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub ip_masq: bool,

    /// Do not use --random-fully on MASQUERADE.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub ip_masq_fully_random_disable: bool,

    /// Seconds between full checks of the NAT rules (changes are repaired at once in any case).
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5)]
    pub iptables_resync: u64,

    /// Accept forwarding to and from the cluster network.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = true)]
    pub iptables_forward_rules: bool,

    /// Where to write the subnet file the CNI plugin reads.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,

    /// Address of the health server.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: std::net::IpAddr,

    /// Port of the health server (/healthz, /readyz); 0 disables it.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,

    /// Set the Node's NetworkUnavailable condition to False once ready.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = true)]
    pub set_node_network_unavailable: bool,

    /// NAT mode (weft's own flag): auto follows EnableNFTables and the host's iptables.
    #[arg(long, env = "WEFT_NAT_MODE", default_value = "auto", value_parser = parse_nat_mode)]
    pub nat_mode: NatModeChoice,

    /// If another weftd runs on this node, take the node over from it instead
    /// of refusing to start (weft's own flag, for rolling updates with
    /// `maxSurge`): it stops writing, this one starts beside its data plane,
    /// and once this one is ready the other stops its data plane (the UDP
    /// backend's forwarder drains into this one's: nothing is lost).
    #[arg(long, env = "WEFT_TAKE_OVER", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub take_over: bool,

    /// Log verbosity as flanneld's -v (0 info, 1–2 debug, 3+ trace); RUST_LOG overrides.
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub verbosity: u8,
}

/// `--nat-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatModeChoice {
    /// Detect.
    Auto,
    /// This mode.
    Forced(NatMode),
}

fn parse_nat_mode(s: &str) -> Result<NatModeChoice, String> {
    match s {
        "auto" => Ok(NatModeChoice::Auto),
        other => other.parse().map(NatModeChoice::Forced),
    }
}

/// flanneld flags weft does not support, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "etcd-endpoints",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-prefix",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-keyfile",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-certfile",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-cafile",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-username",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "etcd-password",
        "the etcd subnet manager is not supported: use --kube-subnet-mgr",
    ),
    (
        "subnet-lease-renew-margin",
        "leases are an etcd-mode feature: use --kube-subnet-mgr",
    ),
    (
        "ip-blackhole-route",
        "the blackhole route (for Canal) is not supported by weft",
    ),
    (
        "vxlan-config",
        "not a flanneld option weft knows; put VXLAN settings in net-conf.json's Backend",
    ),
    (
        "wireguard-key-file",
        "the wireguard backend is not supported by weft",
    ),
    (
        "charon-executable-path",
        "the ipsec backend is not supported by weft",
    ),
    (
        "charon-vici-uri",
        "the ipsec backend is not supported by weft",
    ),
];

/// Why the command line or environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// A flanneld flag weft does not implement.
    #[error("flag --{flag}{origin}: {why}")]
    Unsupported {
        /// The flag's name.
        flag: String,
        /// ` (from FLANNELD_…)` when it came from the environment.
        origin: String,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// clap's own error (unknown flag, bad value, --help, --version).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

impl Flags {
    /// Parses a command line (with the program name first) and the process environment.
    pub fn parse_from_env<I, T>(args: I) -> Result<Flags, FlagsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Self::parse_with_env(args, std::env::vars_os())
    }

    /// Like [`parse_from_env`](Self::parse_from_env) with an explicit environment (for tests:
    /// clap reads `env = …` from the process environment, so the unsupported-flag check is
    /// what this one adds).
    pub fn parse_with_env<I, T, E>(args: I, env: E) -> Result<Flags, FlagsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
        E: IntoIterator<Item = (OsString, OsString)>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).map(go_style).collect();
        for a in args.iter().skip(1) {
            let text = a.to_string_lossy();
            if let Some(name) = text.strip_prefix("--") {
                let name = name.split('=').next().unwrap_or_default();
                if let Some((flag, why)) = UNSUPPORTED.iter().find(|(f, _)| *f == name) {
                    return Err(FlagsError::Unsupported {
                        flag: (*flag).into(),
                        origin: String::new(),
                        why,
                    });
                }
            }
        }
        for (k, _) in env {
            let k = k.to_string_lossy();
            if let Some(rest) = k.strip_prefix("FLANNELD_") {
                let flag = rest.to_ascii_lowercase().replace('_', "-");
                if let Some((flag, why)) = UNSUPPORTED.iter().find(|(f, _)| *f == flag) {
                    return Err(FlagsError::Unsupported {
                        flag: (*flag).into(),
                        origin: format!(" (from {k})"),
                        why,
                    });
                }
            }
        }
        Ok(Flags::try_parse_from(args)?)
    }
}

/// Go's flag package takes `-name` like `--name`; clap wants the double dash.
fn go_style(arg: OsString) -> OsString {
    match arg.to_str() {
        Some(s)
            if s.starts_with('-')
                && !s.starts_with("--")
                && s.len() > 2
                && s.as_bytes()[1].is_ascii_alphabetic() =>
        {
            // `-v=2` and `-v` stay short flags; `-ip-masq` becomes `--ip-masq`.
            if s.starts_with("-v=") || s == "-v" {
                OsString::from(s)
            } else {
                OsString::from(format!("-{s}"))
            }
        }
        _ => arg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Flags, FlagsError> {
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Flags::parse_with_env(std::iter::once("weftd").chain(args.iter().copied()), env)
    }

    #[test]
    fn flannel_manifest_command_line() {
        let f = parse(
            &["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"],
            &[],
        )
        .unwrap();
        assert!(f.ip_masq && f.kube_subnet_mgr);
        assert_eq!(f.healthz_port, 8081);
        assert_eq!(f.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(
            f.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert!(
            f.iptables_forward_rules
                && f.set_node_network_unavailable
                && !f.ip_masq_fully_random_disable
        );
        assert_eq!(f.iptables_resync, 5);
        assert_eq!(f.nat_mode, NatModeChoice::Auto);
        assert!(!f.take_over);
    }

    #[test]
    fn go_flag_syntax() {
        let f = parse(
            &[
                "-ip-masq=false",
                "-iface=eth1",
                "--iface",
                "10.0.0.5",
                "-iptables-forward-rules=false",
                "-v=2",
            ],
            &[],
        )
        .unwrap();
        assert!(!f.ip_masq && !f.iptables_forward_rules);
        assert_eq!(f.iface, vec!["eth1".to_string(), "10.0.0.5".to_string()]);
        assert_eq!(f.verbosity, 2);
    }

    #[test]
    fn unsupported_flanneld_flags_are_errors_that_say_why() {
        for args in [
            &["--etcd-endpoints=http://1.2.3.4:2379"][..],
            &["-etcd-prefix", "/x"],
            &["--ip-blackhole-route"],
        ] {
            let e = parse(args, &[]).unwrap_err();
            assert!(matches!(e, FlagsError::Unsupported { .. }), "{args:?}: {e}");
            assert!(e.to_string().contains("not supported"), "{e}");
        }
        let e = parse(&[], &[("FLANNELD_ETCD_ENDPOINTS", "http://x")]).unwrap_err();
        assert!(
            e.to_string().contains("(from FLANNELD_ETCD_ENDPOINTS)"),
            "{e}"
        );
        assert!(matches!(
            parse(&["--no-such-flag"], &[]).unwrap_err(),
            FlagsError::Clap(_)
        ));
        assert!(matches!(
            parse(&["--nat-mode=iptables-sideways"], &[]).unwrap_err(),
            FlagsError::Clap(_)
        ));
    }

    #[test]
    fn public_ipv6_and_a_v6_iface_can_reach() {
        let f = parse(
            &[
                "--public-ipv6=fd00:18::2",
                "--iface-can-reach",
                "fd00:18::1",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(f.public_ipv6, Some("fd00:18::2".parse().unwrap()));
        assert_eq!(f.iface_can_reach, Some("fd00:18::1".parse().unwrap()));
        assert!(parse(&["--public-ipv6=10.0.0.1"], &[]).is_err());
    }

    #[test]
    fn nat_mode_flag() {
        assert_eq!(
            parse(&["--nat-mode=nftables"], &[]).unwrap().nat_mode,
            NatModeChoice::Forced(NatMode::Nftables)
        );
    }
}
