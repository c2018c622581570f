//! One agent per network namespace.
//!
//! Two agents programming the same node would fight over its routes, FDB
//! entries and NAT rules. weftd therefore binds an abstract Unix socket,
//! `@weft/agent`, before it touches anything. Abstract sockets belong to the
//! network namespace, so a second weftd on the same node finds the name taken
//! and exits. The kernel releases the name when the holder dies, even by
//! SIGKILL, so no stale lock ever blocks a restart. The holder answers each
//! connection with its pid, so the refusal can name it.

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The abstract socket's name (shown as `@weft/agent` by `ss -xl`).
pub const NAME: &str = "weft/agent";

/// Why this agent may not run.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another agent holds the name.
    #[error("another weftd{holder} already runs in this network namespace (it holds the abstract socket @{NAME}); refusing to start, so that two agents never program the same node")]
    Taken {
        /// ` (pid N)` when the holder said it.
        holder: String,
    },
    /// The socket could not be made.
    #[error("cannot bind the abstract socket @{NAME}: {0}")]
    Io(#[source] std::io::Error),
}

/// Held while the agent runs; dropping it frees the name.
pub struct Instance {
    listener: tokio::net::UnixListener,
}

impl Instance {
    /// Takes the name, or says who has it.
    pub fn acquire() -> Result<Instance, InstanceError> {
        let addr = SocketAddr::from_abstract_name(NAME).map_err(InstanceError::Io)?;
        let listener = match UnixListener::bind_addr(&addr) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(InstanceError::Taken {
                    holder: holder_pid(&addr)
                        .map(|pid| format!(" (pid {pid})"))
                        .unwrap_or_default(),
                })
            }
            Err(e) => return Err(InstanceError::Io(e)),
        };
        listener.set_nonblocking(true).map_err(InstanceError::Io)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(InstanceError::Io)?;
        Ok(Instance { listener })
    }

    /// Answers every connection with this process's pid, until dropped.
    pub async fn serve(self) {
        let pid = std::process::id().to_string();
        loop {
            if let Ok((stream, _)) = self.listener.accept().await {
                // A few bytes into a fresh socket's buffer: never blocks.
                if stream.writable().await.is_ok() {
                    let _ = stream.try_write(pid.as_bytes());
                }
            }
        }
    }
}

/// The pid the holder answers with, if it answers within a second.
fn holder_pid(addr: &SocketAddr) -> Option<u32> {
    let mut stream = UnixStream::connect_addr(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.trim().parse().ok()
}
