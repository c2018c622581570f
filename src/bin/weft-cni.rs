//! weft-cni: the CNI plugin (flannel's drop-in; install it as
//! `/opt/cni/bin/flannel`). See [`weft::cni`].

use std::io::Write;
use std::process::ExitCode;

use weft::cni::{CniEnv, CniError, Outcome, Version};

fn main() -> ExitCode {
    let env = CniEnv::from_process();
    let outcome = std::panic::catch_unwind(|| weft::cni::run(&env, std::io::stdin().lock()))
        .unwrap_or_else(|_| {
            Outcome::error(
                &CniError::internal("weft-cni panicked (a bug: please report it)"),
                Version::LATEST,
            )
        });
    let mut stdout = std::io::stdout().lock();
    let written = if outcome.stdout.is_empty() {
        Ok(())
    } else {
        writeln!(stdout, "{}", outcome.stdout)
    };
    if written.and_then(|()| stdout.flush()).is_err() || !outcome.success {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
