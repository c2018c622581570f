//! Where the cluster's Kubernetes binaries come from: `../shared/kube`
//! (`<name>.xz`, unpacked once into the binary cache) or `--kube-dir DIR`,
//! which may also be the official server release (`kubernetes/server/bin`,
//! plain binaries). What DIR lacks — the official release has no etcd and
//! no start script — is taken from `../shared/kube`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

use crate::kube_api::bin_cache;
use crate::kube_api::RealApiServer;

/// Every binary the cluster runs, by file name.
pub const ALL: [&str; 7] = [
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

/// The cluster's binaries and the API server's start script.
#[derive(Debug, Clone)]
pub struct KubeBins {
    /// Searched first (`--kube-dir`).
    dir: Option<PathBuf>,
    /// `../shared/kube`, if present.
    shared: Option<PathBuf>,
}

impl KubeBins {
    /// The binaries of `kube_dir` (falling back to `../shared/kube` for what
    /// it lacks), or of `../shared/kube` alone. Fails naming what is missing.
    pub fn locate(kube_dir: Option<&Path>) -> anyhow::Result<KubeBins> {
        let shared = RealApiServer::locate().ok();
        let dir = match kube_dir {
            Some(d) => Some(
                d.canonicalize()
                    .with_context(|| format!("--kube-dir {}", d.display()))?,
            ),
            None => None,
        };
        let bins = KubeBins { dir, shared };
        let missing: Vec<&str> = ALL
            .into_iter()
            .filter(|name| bins.find(name).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "no {} in {} (give --kube-dir DIR with the Kubernetes server binaries, \
                 plain or as NAME.xz)",
                missing.join(", "),
                bins.searched()
            );
        }
        if bins.script_dir().is_none() {
            bail!(
                "no API server start script: ../shared/kube (start, stop) is needed beside {}",
                bins.searched()
            );
        }
        Ok(bins)
    }

    fn searched(&self) -> String {
        let dirs: Vec<String> = [&self.dir, &self.shared]
            .into_iter()
            .flatten()
            .map(|d| d.display().to_string())
            .collect();
        if dirs.is_empty() {
            "../shared/kube (absent)".into()
        } else {
            dirs.join(" or ")
        }
    }

    /// The directory with the `start` and `stop` scripts.
    pub fn script_dir(&self) -> Option<PathBuf> {
        [&self.dir, &self.shared]
            .into_iter()
            .flatten()
            .find(|d| d.join("start").is_file() && d.join("stop").is_file())
            .cloned()
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        for dir in [&self.dir, &self.shared].into_iter().flatten() {
            let plain = dir.join(name);
            if plain.is_file() {
                return Some(plain);
            }
            let xz = dir.join(format!("{name}.xz"));
            if xz.is_file() {
                return Some(xz);
            }
        }
        None
    }

    /// An executable path for `name`: the plain file, or its `.xz`
    /// unpacked into the binary cache (or into `scratch` without a cache).
    pub fn path(&self, name: &str, scratch: &Path) -> anyhow::Result<PathBuf> {
        let found = self
            .find(name)
            .ok_or_else(|| anyhow!("no {name} in {}", self.searched()))?;
        if found.extension().is_none_or(|e| e != "xz") {
            let mode = std::fs::metadata(&found)?.permissions().mode();
            if mode & 0o111 == 0 {
                bail!("{} is not executable", found.display());
            }
            return Ok(found);
        }
        let cache = match bin_cache::cache_dir() {
            Some(c) => c,
            None => scratch.to_path_buf(),
        };
        std::fs::create_dir_all(&cache)?;
        bin_cache::unpacked(&found, &cache, name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An official server release has plain binaries and no etcd or start
    /// script: those come from ../shared/kube.
    #[test]
    fn plain_binaries_of_a_release_directory_come_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "kubectl",
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        match KubeBins::locate(Some(dir.path())) {
            Ok(bins) => {
                let scratch = tempfile::tempdir().unwrap();
                let kubelet = bins.path("kubelet", scratch.path()).unwrap();
                assert_eq!(kubelet, dir.path().canonicalize().unwrap().join("kubelet"));
                assert!(bins.script_dir().unwrap().join("start").is_file());
                assert!(bins.find("etcd").unwrap().ends_with("etcd.xz"));
            }
            // Without ../shared/kube there is no etcd: the error names it.
            Err(e) => assert!(format!("{e:#}").contains("etcd"), "{e:#}"),
        }
    }

    #[test]
    fn a_binary_that_is_not_executable_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubelet"), "x").unwrap();
        let bins = KubeBins {
            dir: Some(dir.path().to_path_buf()),
            shared: None,
        };
        let e = bins.path("kubelet", dir.path()).unwrap_err();
        assert!(format!("{e}").contains("not executable"), "{e}");
    }
}
