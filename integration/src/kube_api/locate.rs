//! Finding the shared kube directory and the tools its scripts need.

use std::path::{Path, PathBuf};

/// Files the shared kube directory must hold.
const REQUIRED_FILES: [&str; 4] = ["start", "stop", "kube-apiserver.xz", "etcd.xz"];
/// Programs the start script needs.
const REQUIRED_TOOLS: [&str; 3] = ["openssl", "curl", "xz"];

/// See [`RealApiServer::locate`](super::RealApiServer::locate).
pub(super) fn locate() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("WEFT_KUBE_DIR") {
        let dir = PathBuf::from(dir);
        check_dir(&dir).map_err(|e| format!("WEFT_KUBE_DIR: {e}"))?;
        check_tools()?;
        return Ok(dir.canonicalize().unwrap_or(dir));
    }
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kube")];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("../shared/kube"));
    }
    let mut reasons = Vec::new();
    for dir in candidates {
        match check_dir(&dir) {
            Ok(()) => {
                check_tools()?;
                return Ok(dir.canonicalize().unwrap_or(dir));
            }
            Err(e) => reasons.push(e),
        }
    }
    Err(reasons.join("; "))
}

/// Whether `dir` holds everything the start script needs.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let missing: Vec<&str> = REQUIRED_FILES
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    match missing.as_slice() {
        [] => Ok(()),
        m if m.len() == REQUIRED_FILES.len() => Err(format!("{} is absent", dir.display())),
        m => Err(format!("{} lacks {}", dir.display(), m.join(", "))),
    }
}

fn check_tools() -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = REQUIRED_TOOLS
        .into_iter()
        .filter(|tool| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing tools: {} (apt-get install curl xz-utils openssl)",
            missing.join(", ")
        ))
    }
}
