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
        let env = weft::subnet_env::SubnetEnv {
            network,
            subnet,
            mtu: 68 + u32::from(u16::from_be_bytes([data[6], data[7]])) % 65_000,
            ipmasq: data[0] & 1 == 1,
        };
        let read = weft::cni::subnet_file::SubnetFile::parse(&env.render(), path)
            .expect("the agent's subnet.env must read back");
        assert_eq!(read.mtu, env.mtu);
        assert_eq!(read.ipmasq, env.ipmasq);
        assert_eq!(read.networks[0].to_string(), network.to_string());
        assert_eq!(read.subnet.map(|s| s.to_string()), Some(subnet.to_string()));
    }
});
