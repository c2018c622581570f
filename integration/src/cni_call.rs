//! Running a CNI plugin as a container runtime does: the `CNI_*`
//! environment, the network configuration on stdin, the result on stdout.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use std::process::{Command, Output, Stdio};

/// One plugin invocation.
#[derive(Debug, Clone, Copy)]
pub struct CniCall<'a> {
    /// `CNI_COMMAND`: ADD, DEL, CHECK, VERSION, STATUS, GC.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub id: &'a str,
    /// `CNI_NETNS`: the pod's namespace path ("" for none).
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_PATH`: where the plugin finds its delegates.
    pub cni_path: &'a Path,
}

impl CniCall<'_> {
    /// Runs `plugin` (a command the caller prepared: plain, or inside a
    /// namespace with `Netns::command`) with this call's environment and
    /// `config` on stdin, and waits for it.
    pub fn run(&self, mut plugin: Command, config: &[u8]) -> std::io::Result<Output> {
        let mut child = plugin
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(config)?;
        }
        child.wait_with_output()
    }
}

/// kube-flannel.yml's `flannel` conflist entry (`hairpinMode`,
/// `isDefaultGateway`) at CNI `version`, with its subnet file and the
/// plugin's and host-local's state directories at the given paths.
pub fn flannel_netconf(
    version: &str,
    subnet_file: &Path,
    data_dir: &Path,
    ipam_dir: &Path,
) -> Value {
    json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": subnet_file,
        "dataDir": data_dir,
        "ipam": {"dataDir": ipam_dir},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true}
    })
}
