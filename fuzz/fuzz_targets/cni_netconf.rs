//! What a container runtime hands weft-cni: the network configuration on
//! stdin and CNI_ARGS; parsing, checking and building the delegate's
//! configuration never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (conf, args) = data.split_at(split);
    if let Ok(conf) = weft::cni::NetConf::parse(conf) {
        let _ = conf.delegate_type();
        let _ = conf.ipam_type();
        let subnet = weft::cni::subnet_file::SubnetFile::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            std::path::Path::new("/run/flannel/subnet.env"),
        )
        .expect("a valid subnet file");
        let _ = conf.delegate_config(&subnet);
    }
    let args = String::from_utf8_lossy(args.get(1..).unwrap_or_default()).into_owned();
    let env = weft::cni::CniEnv::from_vars([
        ("CNI_COMMAND", std::ffi::OsString::from("ADD")),
        ("CNI_CONTAINERID", "abc".into()),
        ("CNI_NETNS", "/var/run/netns/x".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
        ("CNI_ARGS", args.into()),
    ]);
    let _ = env.check(weft::cni::Command::Add);
});
