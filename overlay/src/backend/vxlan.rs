//! VXLAN: one `flannel.<VNI>` device; per peer a PERMANENT neighbour, an FDB
//! entry and an onlink route, or a plain route when DirectRouting finds the
//! peer on the same L2 network.

use ipnet::Ipv4Net;
use serde_json::Value;

use super::{Backend, PeerEntries};
use crate::error::LeaseFault;
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, UnderlayFacts, VxlanConfig, VXLAN_OVERHEAD};
use crate::state::{Dev, FdbEntry, Neighbour, Route, VxlanDevice, ROUTE_PROTOCOL};

/// The VXLAN backend.
#[derive(Debug, Clone)]
pub struct Vxlan {
    config: VxlanConfig,
}

impl Vxlan {
    /// A VXLAN backend with these parameters.
    pub fn new(config: VxlanConfig) -> Self {
        Vxlan { config }
    }
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

impl Backend for Vxlan {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn device(
        &self,
        local: &LocalNode,
        underlay: &UnderlayFacts,
        network: Ipv4Net,
    ) -> Option<VxlanDevice> {
        let base = self.config.mtu.unwrap_or(underlay.mtu);
        Some(VxlanDevice {
            name: self.config.device_name(),
            vni: self.config.vni,
            local: local.public_ip,
            port: self.config.port,
            underlay: underlay.ifindex,
            learning: self.config.learning,
            mtu: base.saturating_sub(VXLAN_OVERHEAD),
            mac: local.vtep_mac,
            address: Ipv4Net::new(local.subnet.network(), 32).unwrap_or(local.subnet),
            network,
        })
    }

    fn peer(
        &self,
        lease: &Lease,
        underlay: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)> {
        let data = VxlanBackendData::parse(&lease.backend_data)?;
        // flannel writes VNI 1 by default; a 0 (absent) is taken as "same as ours".
        if data.vni != 0 && data.vni != u64::from(self.config.vni) {
            return Err((
                "backend-data.VNI",
                LeaseFault::VniMismatch {
                    expected: self.config.vni,
                    found: data.vni,
                },
            ));
        }
        if self.config.direct_routing && underlay.is_on_link(lease.public_ip) {
            return Ok(PeerEntries::direct(lease));
        }
        let gateway = lease.subnet.network();
        Ok(PeerEntries {
            route: Route {
                dst: lease.subnet,
                via: gateway,
                dev: Dev::Overlay,
                onlink: true,
                protocol: ROUTE_PROTOCOL,
            },
            neighbour: Some(Neighbour {
                ip: gateway,
                mac: data.vtep_mac,
            }),
            fdb: Some(FdbEntry {
                mac: data.vtep_mac,
                dst: lease.public_ip,
            }),
        })
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
