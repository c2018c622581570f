//! Taking a node over from a running weftd, and handing it over to a
//! successor (`--take-over`; the protocol is in [`super::instance`]).
//!
//! The holder, asked: its overlay reconcilers fall quiet (no kernel reads
//! or writes; a userspace data plane keeps forwarding), its NAT loops and
//! health server stop; it says "quiet". The successor starts as any weftd
//! does — finding everything in place it writes nothing — with its data
//! plane sharing the holder's port; once ready it says "go". The holder's
//! data plane then drains into the successor's and stops, the name is let
//! go, it says "gone" and waits to be stopped. Neither ever writes while
//! the other does.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_overlay::{PerFamily, ReconcilerHandle};

use super::instance::{AgentRequest, Instance, InstanceError, Predecessor, TakeOverRequest};
use super::AgentError;

/// How long the successor tries to take the name once the holder let it go.
const NAME_WAIT: Duration = Duration::from_secs(5);
/// How long a successor waits for a holder that is stopping anyway.
const LEAVING_WAIT: Duration = Duration::from_secs(30);

/// Takes the node: the name, or (with `take_over`) the running agent's
/// promise to hand the node over. Returns the task serving the name (if
/// held) and the quiet predecessor (if any).
pub(super) async fn claim(
    take_over: bool,
    requests: mpsc::Sender<AgentRequest>,
) -> Result<(Option<JoinHandle<()>>, Option<Predecessor>), AgentError> {
    match Instance::acquire() {
        Ok(instance) => Ok((Some(serve(instance, requests)), None)),
        Err(InstanceError::Taken { .. }) if take_over => match Predecessor::ask().await {
            Ok(Some(p)) => {
                tracing::info!(
                    pid = p.pid,
                    "taking the node over: the running weftd is quiet"
                );
                Ok((None, Some(p)))
            }
            // It left meanwhile, or is leaving (stopped, it answers no
            // more): the name is free soon.
            other => {
                if let Err(error) = other {
                    tracing::info!(%error, "the running weftd does not hand over; waiting for it to go");
                }
                let instance = Instance::acquire_within(LEAVING_WAIT).await?;
                Ok((Some(serve(instance, requests)), None))
            }
        },
        Err(e) => Err(e.into()),
    }
}

/// This agent is ready: the predecessor stops its data plane and lets the
/// name go; this one's data plane has the node alone and the name is
/// taken. Returns the task serving the name.
pub(super) async fn complete(
    predecessor: Predecessor,
    overlays: &PerFamily<ReconcilerHandle>,
    requests: mpsc::Sender<AgentRequest>,
) -> Result<JoinHandle<()>, AgentError> {
    let pid = predecessor.pid;
    match predecessor.release().await {
        Ok(()) => tracing::info!(pid, "took the node over"),
        // It died or hung: its data plane is gone or soon will be; the
        // name is free once it is.
        Err(e) => {
            tracing::warn!(pid, error = %e, "the predecessor did not confirm the hand-over; taking the node anyway")
        }
    }
    for (_, overlay) in overlays.iter() {
        overlay.predecessor_gone().await;
    }
    let instance = Instance::acquire_within(NAME_WAIT).await?;
    Ok(serve(instance, requests))
}

/// Answers the agent socket from a task of its own (the name is held until
/// the task ends).
fn serve(instance: Instance, requests: mpsc::Sender<AgentRequest>) -> JoinHandle<()> {
    tokio::task::spawn_local(instance.serve(requests))
}

/// What a running agent hands over.
pub(super) struct Running {
    pub overlays: PerFamily<ReconcilerHandle>,
    pub overlay_tasks: Vec<JoinHandle<()>>,
    pub nat: Vec<weft_nat::ReconcilerHandle>,
    pub health: Option<JoinHandle<()>>,
    pub instance: Option<JoinHandle<()>>,
}

/// Hands the node over to the successor that asked, then waits for
/// `shutdown`. A successor that goes away before "go" is an error: this
/// agent, quiet by then, exits to be restarted afresh.
pub(super) async fn hand_over(
    mut request: TakeOverRequest,
    running: Running,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tracing::info!("a successor asks to take the node over: falling quiet");
    for (_, overlay) in running.overlays.iter() {
        overlay.quiesce().await;
    }
    for n in running.nat {
        n.stop();
    }
    if let Some(h) = running.health {
        h.abort();
        let _ = h.await;
    }
    tokio::pin!(shutdown);
    tokio::select! {
        go = request.quiet_until_go() => go?,
        // Stopped meanwhile: the data plane stops; the successor, not told
        // "gone", takes the node all the same.
        _ = &mut shutdown => {
            tracing::info!("stopped while handing the node over");
            return Ok(());
        }
    }
    for (_, overlay) in running.overlays.iter() {
        overlay.release().await;
    }
    drop(running.overlays);
    for task in running.overlay_tasks {
        let _ = task.await;
    }
    if let Some(t) = running.instance {
        // The listener goes with the task: the name is free.
        t.abort();
        let _ = t.await;
    }
    request.gone().await?;
    tracing::info!("handed the node over; waiting to be stopped");
    shutdown.await;
    Ok(())
}
