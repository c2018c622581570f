//! The subnet file: the plugin's reader takes any text without panicking,
//! and what the agent's writer produces always reads back to the same
//! values.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("/run/flannel/subnet.env");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft::cni::subnet_file::SubnetFile::parse(text, path);
    }
    if data.len() >= 8 {
        let net_len = 8 + data[0] % 17; // /8 .. /24
        let sub_len = (net_len + 1 + data[1] % 6).min(30);
        let base = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
        let Ok(network) = ipnet::Ipv4Net::new(base.into(), net_len) else {
            return;
        };
        let network = network.trunc();
        let Ok(subnet) = ipnet::Ipv4Net::new(network.network(), sub_len) else {
            return;
        };
        let mut families = vec![weft::subnet_env::FamilyLines {
            network: network.into(),
            subnet: subnet.into(),
        }];
        // Dual stack: a /48 network from the same bytes and a /64 in it.
        let v6 = data[0] & 2 == 2;
        if v6 {
            let base6 = u128::from(base) << 96 | 0xfc00 << 112;
            let net6 = ipnet::Ipv6Net::new(base6.into(), 48).map(|n| n.trunc());
            let Ok(net6) = net6 else { return };
            let Ok(sub6) = ipnet::Ipv6Net::new(net6.network(), 64) else {
                return;
            };
            families.push(weft::subnet_env::FamilyLines {
                network: net6.into(),
                subnet: sub6.into(),
            });
        }
        let floor = if v6 { 1280 } else { 68 };
        let env = weft::subnet_env::SubnetEnv {
            families: families.clone(),
            mtu: floor + u32::from(u16::from_be_bytes([data[6], data[7]])) % 64_000,
            ipmasq: data[0] & 1 == 1,
        };
        let read = weft::cni::subnet_file::SubnetFile::parse(&env.render(), path)
            .expect("the agent's subnet.env must read back");
        assert_eq!(read.mtu, env.mtu);
        assert_eq!(read.ipmasq, env.ipmasq);
        assert_eq!(read.networks[0].to_string(), network.to_string());
        assert_eq!(read.subnet.map(|s| s.to_string()), Some(subnet.to_string()));
        if let Some(f) = families.get(1) {
            assert_eq!(read.ipv6_networks[0].to_string(), f.network.to_string());
            assert_eq!(read.ipv6_subnet.map(|s| s.to_string()), Some(f.subnet.to_string()));
        }
    }
});
