//! `cargo xtask <recipe> [args…]`: the project's commands on a fresh
//! machine that has only Rust. Runs `.ci/deps` (the Debian packages the
//! lab and the tests use, and `just`, when missing; nothing when all are
//! there), then `just <recipe> [args…]`, and exits with its code.
//!
//! ```sh
//! cargo xtask lab     # the lab
//! cargo xtask test    # every check
//! cargo xtask         # the list of recipes
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    match run(&root) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cargo xtask: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(root: &Path) -> Result<ExitCode, String> {
    let deps = Command::new("bash")
        .arg(root.join(".ci/deps"))
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run .ci/deps: {e}"))?;
    if !deps.success() {
        return Err(format!(".ci/deps failed ({deps})"));
    }
    let local = root.join(".tools/just/bin/just");
    let just = if local.is_file() {
        local
    } else {
        PathBuf::from("just")
    };
    let status = Command::new(&just)
        .args(std::env::args_os().skip(1))
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", just.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Ended by a signal (Ctrl-C): report it as 130, as shells do.
        None => ExitCode::from(130),
    })
}
