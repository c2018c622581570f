//! Running Rust code (async or not) inside a namespace on a dedicated thread.

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::thread::JoinHandle;

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};
use crate::ns::Netns;

impl Netns {
    /// Runs `f()`'s future to completion on a fresh OS thread that has
    /// entered this namespace (`setns(2)`), on a current-thread Tokio
    /// runtime with all drivers enabled, and returns its output.
    ///
    /// Everything the future does — sockets, netlink, `tokio::process`,
    /// `spawn_blocking` threads (created from that thread) — happens in the
    /// namespace. Note that `/proc/self/net` shows the *process's* (main
    /// thread's) namespace; use `/proc/thread-self/net` instead.
    ///
    /// A panic inside is re-raised in the caller. Errors are only for
    /// failing to open/enter the namespace or to build the runtime.
    pub fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.spawn_task(f)?.join()
    }

    /// Like [`run`](Self::run) but returns at once with a handle; for a
    /// long-running loop (an agent, a reconciler) that runs while the test
    /// does other things. To stop it, give the closure your own channel.
    ///
    /// The thread holds the namespace open, so it stays usable even if this
    /// [`Netns`] is dropped first (only its name is deleted).
    pub fn spawn_task<F, Fut, T>(&self, f: F) -> Result<NsTask<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        // Open here so a missing namespace is reported to the caller at once.
        let path = self.path().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Io {
            context: format!("cannot open {}", path.display()),
            source,
        })?;
        let name = self.name().to_owned();
        let handle = std::thread::Builder::new()
            .name(format!("netns:{name}"))
            .spawn(move || enter_and_run(file, path, f))
            .map_err(|source| Error::Io {
                context: format!("cannot start a thread for namespace {name}"),
                source,
            })?;
        Ok(NsTask { handle, name })
    }
}

fn enter_and_run<F, Fut, T>(file: File, path: PathBuf, f: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
        path: path.clone(),
        source,
    })?;
    drop(file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: format!("cannot build a Tokio runtime in {}", path.display()),
            source,
        })?;
    Ok(runtime.block_on(f()))
}

/// Handle to code running in a namespace, from [`Netns::spawn_task`].
///
/// Dropping it detaches the thread.
#[derive(Debug)]
#[must_use = "dropping an NsTask detaches it; call join() to wait for its result"]
pub struct NsTask<T> {
    handle: JoinHandle<Result<T>>,
    name: String,
}

impl<T> NsTask<T> {
    /// Waits for the task and returns its output; re-raises its panic.
    /// Errors if the thread could not enter the namespace or build its
    /// runtime.
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Whether the task has finished (so [`join`](Self::join) won't block).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Name of the namespace the task runs in.
    pub fn netns_name(&self) -> &str {
        &self.name
    }
}
