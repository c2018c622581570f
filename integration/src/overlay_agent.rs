//! Runs weft's overlay reconciler inside a node namespace, the way the agent
//! will, and gives the caller its handle.

use std::sync::mpsc;

use weft_netns::{Netns, NsTask};
use weft_overlay::reconciler::{Input, Options};
use weft_overlay::{Reconciler, ReconcilerHandle};

/// A reconciler running on its own thread in a namespace.
pub struct OverlayAgent {
    /// Controls the reconciler. Dropping every clone stops it.
    pub handle: ReconcilerHandle,
    task: NsTask<()>,
}

impl OverlayAgent {
    /// Starts a reconciler in `ns` with this input.
    pub fn start(ns: &Netns, input: Input, options: Options) -> anyhow::Result<OverlayAgent> {
        let (tx, rx) = mpsc::channel();
        let task = ns.spawn_task(move || async move {
            match Reconciler::start(input, options) {
                Ok((reconciler, handle)) => {
                    let _ = tx.send(Ok(handle));
                    reconciler.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        let handle = rx.recv()??;
        Ok(OverlayAgent { handle, task })
    }

    /// Stops the reconciler and waits for its thread; the kernel state stays.
    pub fn stop(self) -> anyhow::Result<()> {
        drop(self.handle);
        self.task.join()?;
        Ok(())
    }
}
