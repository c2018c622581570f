//! VXLAN: one `flannel.<VNI>` device; per peer a PERMANENT neighbour, an FDB
//! entry and an onlink route, or a plain route when DirectRouting finds the
//! peer on the same L2 network. Pods get the underlay's MTU − 50, and the
//! published `backend-data` is `{"VNI":<n>,"VtepMAC":"<device MAC>"}`.

use std::any::Any;

use ipnet::IpNet;
use serde_json::Value;

use super::{
    report_unknown, same_as, Backend, BackendConfig, PeerEntries, Registration, Section,
    SectionError,
};
use crate::error::LeaseFault;
use crate::family::Family;
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, UnderlayFacts};
use crate::state::{Dev, DeviceSpec, FdbEntry, Neighbour, Route, VxlanDevice, ROUTE_PROTOCOL};

/// flannel's default VXLAN UDP port (the Linux kernel's IANA-registered one).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// Bytes the VXLAN encapsulation costs (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8), as flannel counts it.
pub const VXLAN_OVERHEAD: u32 = 50;
/// What the kernel reserves for the encapsulation over an IPv6 underlay
/// (its `VXLAN6_HEADROOM`: outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8).
/// A device with an IPv6 VTEP is never larger than the underlay's MTU minus
/// this: the kernel cuts a larger MTU down when it creates the device (so
/// flannel's `flannel-v6.1` has 1430 over 1500, though flannel asks for
/// 1450) and refuses one afterwards.
pub const VXLAN6_HEADROOM: u32 = 70;

/// VXLAN parameters, flannel's names and defaults (the backend itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI` (default 1).
    pub vni: u32,
    /// `Port` (default 8472).
    pub port: u16,
    /// `DirectRouting`: peers on the same L2 network are reached by plain routes.
    pub direct_routing: bool,
    /// `MTU`: the underlay MTU to assume instead of the interface's; the device gets this − 50.
    pub mtu: Option<u32>,
    /// `Learning` (default false, i.e. `nolearning`).
    pub learning: bool,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
            mtu: None,
            learning: false,
        }
    }
}

impl VxlanConfig {
    /// The device name flannel uses: `flannel.<VNI>` for IPv4,
    /// `flannel-v6.<VNI>` for IPv6.
    pub fn device_name_for(&self, network: IpNet) -> String {
        match network {
            IpNet::V4(_) => format!("flannel.{}", self.vni),
            IpNet::V6(_) => format!("flannel-v6.{}", self.vni),
        }
    }
}

impl From<VxlanConfig> for BackendConfig {
    fn from(c: VxlanConfig) -> BackendConfig {
        BackendConfig::new(c)
    }
}

/// `"Type": "vxlan"`.
pub(super) const REGISTRATION: Registration = Registration {
    kind: "vxlan",
    parse,
};

fn parse(b: &Section<'_>, ignored: &mut Vec<String>) -> Result<BackendConfig, SectionError> {
    let mut c = VxlanConfig::default();
    if let Some(vni) = b.number("VNI")? {
        if vni == 0 || vni > 0x00ff_ffff {
            return Err(b.error(
                "VNI",
                format!("{vni} is not a VXLAN network identifier (1 to 16777215)"),
            ));
        }
        c.vni = u32::try_from(vni).unwrap_or(DEFAULT_VNI);
    }
    if let Some(port) = b.port("Port", DEFAULT_VXLAN_PORT)? {
        c.port = port;
    }
    if let Some(mtu) = b.number("MTU")? {
        if !(68 + u64::from(VXLAN_OVERHEAD)..=65535).contains(&mtu) {
            return Err(b.error("MTU", format!("{mtu} is not a usable MTU (118 to 65535)")));
        }
        c.mtu = u32::try_from(mtu).ok();
    }
    c.direct_routing = b.boolean("DirectRouting", false)?;
    c.learning = b.boolean("Learning", false)?;
    if b.boolean("GBP", false)? {
        return Err(b.error("GBP", "VXLAN group-based policy is not supported by weft"));
    }
    for k in ["MacPrefix", "Name"] {
        if let Some((k, _)) = b.get(k) {
            ignored.push(format!("Backend.{k}: Windows only"));
        }
    }
    report_unknown(
        b,
        "vxlan",
        &[
            "Type",
            "VNI",
            "Port",
            "MTU",
            "DirectRouting",
            "Learning",
            "GBP",
            "MacPrefix",
            "Name",
        ],
        ignored,
    );
    Ok(BackendConfig::from(c))
}

/// The `backend-data` of a VXLAN node: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanBackendData {
    /// The node's VNI.
    pub vni: u64,
    /// The node's VTEP MAC.
    pub vtep_mac: MacAddr,
}

impl VxlanBackendData {
    /// Parses the annotation. Keys are matched case-insensitively, as flannel's
    /// Go decoder does. The error names the field.
    pub fn parse(raw: &str) -> Result<Self, (&'static str, LeaseFault)> {
        // Fast path: the exact form flannel and weft write, without a JSON parser.
        if let Some(d) = Self::parse_exact(raw) {
            return Ok(d);
        }
        let bad = |field, msg: String| (field, LeaseFault::BadBackendData(msg));
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| bad("backend-data", format!("not JSON ({e}): {raw:?}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("backend-data", format!("not a JSON object: {raw:?}")))?;
        let get = |key: &str| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let mac_text = get("VtepMAC")
            .ok_or_else(|| bad("backend-data.VtepMAC", "missing".into()))?
            .as_str()
            .ok_or_else(|| bad("backend-data.VtepMAC", "not a string".into()))?;
        let vtep_mac: MacAddr = mac_text
            .parse()
            .map_err(|e: crate::mac::BadMac| bad("backend-data.VtepMAC", e.to_string()))?;
        if !vtep_mac.is_unicast() {
            return Err(bad(
                "backend-data.VtepMAC",
                format!("{vtep_mac} is not a unicast MAC"),
            ));
        }
        let vni = match get("VNI") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| bad("backend-data.VNI", format!("{v} is not a number")))?,
        };
        Ok(VxlanBackendData { vni, vtep_mac })
    }

    /// `{"VNI":<n>,"VtepMAC":"<mac>"}` exactly (what [`to_json`](Self::to_json) writes);
    /// `None` for anything else, which the general parser then handles.
    fn parse_exact(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(r#"{"VNI":"#)?;
        let (vni, rest) = rest.split_once(r#","VtepMAC":""#)?;
        let mac = rest.strip_suffix(r#""}"#)?;
        if vni.is_empty() || !vni.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let vtep_mac: MacAddr = mac.parse().ok()?;
        vtep_mac.is_unicast().then_some(VxlanBackendData {
            vni: vni.parse().ok()?,
            vtep_mac,
        })
    }

    /// The annotation text, byte for byte as flannel writes it.
    pub fn to_json(&self) -> String {
        format!(r#"{{"VNI":{},"VtepMAC":"{}"}}"#, self.vni, self.vtep_mac)
    }
}

impl Backend for VxlanConfig {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn device_name(&self, network: IpNet) -> Option<String> {
        Some(self.device_name_for(network))
    }

    fn device(
        &self,
        local: &LocalNode,
        underlay: &UnderlayFacts,
        network: IpNet,
    ) -> Option<DeviceSpec> {
        Some(DeviceSpec::Vxlan(VxlanDevice {
            name: self.device_name_for(network),
            vni: self.vni,
            local: local.public_ip,
            port: self.port,
            underlay: underlay.ifindex,
            learning: self.learning,
            mtu: self.mtu(underlay.mtu, Family::of_addr(&local.public_ip)),
            mac: local.vtep_mac,
            address: IpNet::new(local.subnet.network(), local.subnet.max_prefix_len())
                .unwrap_or(local.subnet),
            network,
        }))
    }

    fn mtu(&self, underlay_mtu: u32, family: Family) -> u32 {
        let overhead = match family {
            Family::V4 => VXLAN_OVERHEAD,
            Family::V6 => VXLAN6_HEADROOM,
        };
        // Never more than the underlay can carry: the kernel refuses a
        // larger device MTU (and pods with a larger one would need
        // fragmentation), whatever `Backend.MTU` says.
        self.mtu
            .unwrap_or(underlay_mtu)
            .min(underlay_mtu)
            .saturating_sub(overhead)
    }

    fn backend_data(&self, device_mac: Option<MacAddr>) -> Option<String> {
        device_mac.map(|vtep_mac| {
            VxlanBackendData {
                vni: u64::from(self.vni),
                vtep_mac,
            }
            .to_json()
        })
    }

    fn restore_mac(&self, own_backend_data: &str) -> Option<MacAddr> {
        VxlanBackendData::parse(own_backend_data)
            .ok()
            .map(|d| d.vtep_mac)
    }

    fn peer(
        &self,
        lease: &Lease,
        underlay: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)> {
        let data = VxlanBackendData::parse(&lease.backend_data)?;
        // flannel writes VNI 1 by default; a 0 (absent) is taken as "same as ours".
        if data.vni != 0 && data.vni != u64::from(self.vni) {
            return Err((
                "backend-data.VNI",
                LeaseFault::VniMismatch {
                    expected: self.vni,
                    found: data.vni,
                },
            ));
        }
        if self.direct_routing && underlay.is_on_link(lease.public_ip) {
            return Ok(PeerEntries::direct(lease));
        }
        let gateway = lease.subnet.network();
        Ok(PeerEntries {
            route: Some(Route {
                dst: lease.subnet,
                via: gateway,
                dev: Dev::Overlay,
                onlink: true,
                protocol: ROUTE_PROTOCOL,
            }),
            neighbour: Some(Neighbour {
                ip: gateway,
                mac: data.vtep_mac,
            }),
            fdb: Some(FdbEntry {
                mac: data.vtep_mac,
                dst: lease.public_ip,
            }),
            forward: None,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn Backend) -> bool {
        same_as(self, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_data_round_trips_flannel_form() {
        let raw = r#"{"VNI":1,"VtepMAC":"5a:11:99:ab:8c:22"}"#;
        let d = VxlanBackendData::parse(raw).unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.vtep_mac.to_string(), "5a:11:99:ab:8c:22");
        assert_eq!(d.to_json(), raw);
    }

    #[test]
    fn backend_data_keys_are_case_insensitive() {
        let d = VxlanBackendData::parse(r#"{"vni":1,"vtepmac":"5a:11:99:ab:8c:22"}"#).unwrap();
        assert_eq!(d.vni, 1);
    }

    #[test]
    fn backend_data_errors_name_the_field() {
        let cases = [
            ("nope", "backend-data"),
            ("[1]", "backend-data"),
            (r#"{"VNI":1}"#, "backend-data.VtepMAC"),
            (r#"{"VNI":1,"VtepMAC":7}"#, "backend-data.VtepMAC"),
            (
                r#"{"VNI":1,"VtepMAC":"zz:11:99:ab:8c:22"}"#,
                "backend-data.VtepMAC",
            ),
            (
                r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#,
                "backend-data.VtepMAC",
            ),
            (
                r#"{"VNI":"x","VtepMAC":"5a:11:99:ab:8c:22"}"#,
                "backend-data.VNI",
            ),
        ];
        for (raw, field) in cases {
            let (f, _) = VxlanBackendData::parse(raw).unwrap_err();
            assert_eq!(f, field, "{raw}");
        }
    }
}
