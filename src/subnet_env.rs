//! `/run/flannel/subnet.env`, byte for byte as flanneld writes it; the CNI
//! plugin reads it.

use std::io::Write;
use std::path::Path;

use ipnet::IpNet;
use weft_overlay::Family;

use crate::config::net_conf::first_ip;

/// One family's lines: the cluster network and this node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyLines {
    /// `FLANNEL_NETWORK` / `FLANNEL_IPV6_NETWORK`: the cluster network.
    pub network: IpNet,
    /// This node's subnet, written as its first address
    /// (`FLANNEL_SUBNET=10.244.1.1/24`, `FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64`).
    pub subnet: IpNet,
}

/// What the subnet file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The enabled families' lines, IPv4 first (each family's own keys).
    pub families: Vec<FamilyLines>,
    /// `FLANNEL_MTU`: the pods' MTU (the VXLAN device's, or the interface's for host-gw).
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: the value of `--ip-masq`.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file's text, in flannel's order: the IPv4 lines, the IPv6
    /// lines, the MTU and the masquerade flag.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in Family::ALL {
            for l in self
                .families
                .iter()
                .filter(|l| Family::of_net(&l.network) == family)
            {
                let (network, subnet) = match family {
                    Family::V4 => ("FLANNEL_NETWORK", "FLANNEL_SUBNET"),
                    Family::V6 => ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"),
                };
                out.push_str(&format!(
                    "{network}={}\n{subnet}={}\n",
                    l.network,
                    first_ip(l.subnet)
                ));
            }
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        out
    }

    /// Writes the file atomically (temporary file in the same directory,
    /// synced, renamed over), creating the directory (0755) if needed; the file
    /// is 0644. Returns false when the file already had exactly this content
    /// (nothing written).
    pub fn write(&self, path: &Path) -> std::io::Result<bool> {
        let text = self.render();
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".subnet.env.")
            .tempfile_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flanneld's output for the seed's worker (10.244.1.0/24) in a 10.244.0.0/16 cluster with VXLAN over a 1500-byte network.
    const FLANNEL_BYTES: &[u8] = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn seed() -> SubnetEnv {
        SubnetEnv {
            families: vec![FamilyLines {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
            }],
            mtu: 1450,
            ipmasq: true,
        }
    }

    fn v6() -> FamilyLines {
        FamilyLines {
            network: "fc00::/48".parse().unwrap(),
            subnet: "fc00:0:0:1::/64".parse().unwrap(),
        }
    }

    #[test]
    fn bytes_identical_to_flannels() {
        assert_eq!(seed().render().as_bytes(), FLANNEL_BYTES);
    }

    /// flanneld's `WriteSubnetFile`: the v4 pair, then the v6 pair.
    #[test]
    fn dual_stack_and_ipv6_only_as_flannel_writes_them() {
        let mut dual = seed();
        dual.families.insert(0, v6());
        assert_eq!(
            dual.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let only = SubnetEnv {
            families: vec![v6()],
            ..seed()
        };
        assert_eq!(
            only.render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn written_atomically_with_flannels_modes_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        assert!(seed().write(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), FLANNEL_BYTES);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(!seed().write(&path).unwrap(), "same content: not rewritten");
        let other = SubnetEnv {
            ipmasq: false,
            ..seed()
        };
        assert!(other.write(&path).unwrap());
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("FLANNEL_IPMASQ=false\n"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }
}
