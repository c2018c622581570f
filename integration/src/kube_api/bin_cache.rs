//! Unpacks kube-apiserver and etcd once into a cache directory and links
//! them into each state directory, so the start script skips its 2-3 s of
//! `xz -d` (it only unpacks what `<state>/bin` lacks).
//!
//! The cache is `$WEFT_KUBE_BIN_CACHE` (empty: no cache), else
//! `<workspace>/target/weft-kube-bin` if `<workspace>/target` exists. Files
//! are keyed by the size and mtime of their `.xz`, so a new `shared/kube`
//! is picked up. Any failure here only means the script unpacks itself.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context as _};

/// The binaries the start script unpacks into `<state>/bin`.
const BINARIES: [&str; 2] = ["kube-apiserver", "etcd"];

pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_KUBE_BIN_CACHE") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    target.is_dir().then(|| target.join("weft-kube-bin"))
}

/// Links cached binaries into `<state>/bin`, unpacking them first if
/// needed. Best effort: errors are only reported on stderr.
pub(super) fn prepare(kube_dir: &Path, state: &Path) {
    let Some(cache) = cache_dir() else { return };
    if let Err(e) = link_all(kube_dir, &cache, state) {
        eprintln!(
            "weft kube_api: binary cache {} unused: {e:#}",
            cache.display()
        );
    }
}

fn link_all(kube_dir: &Path, cache: &Path, state: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cache)?;
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in BINARIES {
        let cached = unpacked(&kube_dir.join(format!("{name}.xz")), cache, name)?;
        std::os::unix::fs::symlink(&cached, bin.join(name))
            .with_context(|| format!("cannot link {}", cached.display()))?;
    }
    Ok(())
}

/// The unpacked `xz` in the cache, unpacked now if it is not there yet
/// (into a temporary name, then renamed: concurrent starts are safe).
pub(crate) fn unpacked(xz: &Path, cache: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(xz).with_context(|| format!("no {}", xz.display()))?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH)?.as_secs();
    let cached = cache.join(format!("{name}-{}-{mtime}", meta.len()));
    if cached.is_file() {
        return Ok(cached);
    }
    let tmp = tempfile::NamedTempFile::new_in(cache)?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdin(Stdio::null())
        .stdout(tmp.reopen()?)
        .status()
        .context("cannot run xz")?;
    if !status.success() {
        bail!("xz -dc {} failed: {status}", xz.display());
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    tmp.persist(&cached)?;
    Ok(cached)
}
