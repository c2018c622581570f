//! One agent per network namespace, and the hand-over between two.
//!
//! Two agents programming the same node would fight over its routes, FDB
//! entries and NAT rules. weftd therefore binds an abstract Unix socket,
//! `@weft/agent`, before it touches anything. Abstract sockets belong to the
//! network namespace, so a second weftd on the same node finds the name taken
//! and exits. The kernel releases the name when the holder dies, even by
//! SIGKILL, so no stale lock ever blocks a restart. The holder answers each
//! connection with its pid (a line), so the refusal can name it.
//!
//! A weftd started with `--take-over` instead asks the holder to hand the
//! node over (a rolling update that starts the new pod before the old one
//! goes, `maxSurge: 1`), in lines over that connection:
//!
//! ```text
//! holder → "<pid>"          successor → "take-over"
//! holder → "quiet"          (it writes nothing any more; its data plane runs)
//!                           ... the successor starts, sharing the data plane's
//!                               port, and becomes ready ...
//! successor → "go"
//! holder → "gone"           (its data plane drained and stopped, the name free)
//! ```
//!
//! The successor then takes the name. A holder whose successor disappears
//! before "go" exits with an error, to be restarted afresh.

use std::io::BufRead;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The abstract socket's name (shown as `@weft/agent` by `ss -xl`).
pub const NAME: &str = "weft/agent";

/// The successor's request.
const TAKE_OVER: &str = "take-over";
/// How long a successor waits for the holder to fall quiet.
const QUIET_WAIT: Duration = Duration::from_secs(30);
/// How long a successor waits for the holder's data plane to stop.
const GONE_WAIT: Duration = Duration::from_secs(10);
/// How long a quiet holder waits for its successor to be ready.
pub const GO_WAIT: Duration = Duration::from_secs(120);

/// Why this agent may not run, or a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another agent holds the name.
    #[error("another weftd{holder} already runs in this network namespace (it holds the abstract socket @{NAME}); refusing to start, so that two agents never program the same node (--take-over asks it to hand the node over)")]
    Taken {
        /// ` (pid N)` when the holder said it.
        holder: String,
    },
    /// The socket could not be made.
    #[error("cannot bind the abstract socket @{NAME}: {0}")]
    Io(#[source] std::io::Error),
    /// The other side of a hand-over said something else, or nothing.
    #[error("hand-over with weftd{peer}: {what}")]
    Handover {
        /// ` (pid N)` when known.
        peer: String,
        /// What went wrong.
        what: String,
    },
}

/// Held while the agent runs; dropping it frees the name.
pub struct Instance {
    listener: tokio::net::UnixListener,
}

/// A successor's request to take the node over, as the holder receives it.
pub struct TakeOverRequest {
    stream: BufReader<tokio::net::UnixStream>,
}

/// What a client of the agent socket asks the running agent.
pub enum AgentRequest {
    /// A successor (`--take-over`).
    TakeOver(TakeOverRequest),
    /// `weft status`: the status as JSON.
    Status(tokio::sync::oneshot::Sender<String>),
    /// `weft debug pause|resume`: repairs paused (true) or resumed.
    Pause(bool, tokio::sync::oneshot::Sender<()>),
}

/// `weft status`'s request.
pub const STATUS: &str = "status";
/// How long a local client waits for the agent's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

impl Instance {
    /// Takes the name, or says who has it.
    pub fn acquire() -> Result<Instance, InstanceError> {
        let addr = address()?;
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

    /// Takes the name once its holder let it go (a hand-over's end): tries
    /// for up to `wait`.
    pub async fn acquire_within(wait: Duration) -> Result<Instance, InstanceError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Instance::acquire() {
                Err(InstanceError::Taken { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Answers every connection with this process's pid, until dropped; a
    /// successor's take-over request, `status`, `pause` and `resume` go to
    /// `requests`.
    pub async fn serve(self, requests: mpsc::Sender<AgentRequest>) {
        let pid = format!("{}\n", std::process::id());
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            let pid = pid.clone();
            tokio::task::spawn_local(async move {
                if stream.write_all(pid.as_bytes()).await.is_err() {
                    return;
                }
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                let asked =
                    tokio::time::timeout(Duration::from_secs(2), stream.read_line(&mut line)).await;
                if !matches!(asked, Ok(Ok(_))) {
                    return;
                }
                match line.trim() {
                    TAKE_OVER => {
                        let _ = requests
                            .send(AgentRequest::TakeOver(TakeOverRequest { stream }))
                            .await;
                    }
                    STATUS => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if requests.send(AgentRequest::Status(tx)).await.is_ok() {
                            if let Ok(Ok(json)) = tokio::time::timeout(ANSWER_WAIT, rx).await {
                                let _ = stream
                                    .get_mut()
                                    .write_all(format!("{json}\n").as_bytes())
                                    .await;
                            }
                        }
                    }
                    word @ ("pause" | "resume") => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let paused = word == "pause";
                        if requests.send(AgentRequest::Pause(paused, tx)).await.is_ok()
                            && matches!(tokio::time::timeout(ANSWER_WAIT, rx).await, Ok(Ok(())))
                        {
                            let _ = stream.get_mut().write_all(b"ok\n").await;
                        }
                    }
                    _ => {}
                }
            });
        }
    }
}

impl TakeOverRequest {
    /// Tells the successor this agent is quiet, then waits (up to
    /// [`GO_WAIT`]) for its "go".
    pub async fn quiet_until_go(&mut self) -> Result<(), InstanceError> {
        self.say("quiet").await?;
        let line = read_line(&mut self.stream, GO_WAIT).await?;
        if line == "go" {
            Ok(())
        } else {
            Err(handover("", format!("expected \"go\", got {line:?}")))
        }
    }

    /// Tells the successor that the data plane stopped and the name is free.
    pub async fn gone(mut self) -> Result<(), InstanceError> {
        self.say("gone").await
    }

    async fn say(&mut self, word: &str) -> Result<(), InstanceError> {
        self.stream
            .get_mut()
            .write_all(format!("{word}\n").as_bytes())
            .await
            .map_err(|e| handover("", format!("cannot say {word:?} to the successor: {e}")))
    }
}

/// The agent this one takes the node over from, quiet now.
pub struct Predecessor {
    stream: BufReader<tokio::net::UnixStream>,
    /// Its pid.
    pub pid: u32,
}

impl Predecessor {
    /// Asks the holder of the name to hand the node over and waits until it
    /// is quiet. `Ok(None)`: nobody holds the name.
    pub async fn ask() -> Result<Option<Predecessor>, InstanceError> {
        let addr = address()?;
        let stream = match UnixStream::connect_addr(&addr) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(e) => return Err(InstanceError::Io(e)),
        };
        stream.set_nonblocking(true).map_err(InstanceError::Io)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(InstanceError::Io)?;
        let mut stream = BufReader::new(stream);
        let pid_line = read_line(&mut stream, Duration::from_secs(2)).await?;
        let pid: u32 = pid_line
            .parse()
            .map_err(|_| handover("", format!("the holder said {pid_line:?}, not its pid")))?;
        let peer = format!(" (pid {pid})");
        stream
            .get_mut()
            .write_all(format!("{TAKE_OVER}\n").as_bytes())
            .await
            .map_err(|e| handover(&peer, format!("cannot ask: {e}")))?;
        let answer = read_line(&mut stream, QUIET_WAIT)
            .await
            .map_err(|e| handover(&peer, e.to_string()))?;
        if answer != "quiet" {
            return Err(handover(
                &peer,
                format!("expected \"quiet\", got {answer:?}"),
            ));
        }
        Ok(Some(Predecessor { stream, pid }))
    }

    /// This agent is ready: the predecessor stops its data plane and lets
    /// the name go; returns once it did.
    pub async fn release(mut self) -> Result<(), InstanceError> {
        let peer = format!(" (pid {})", self.pid);
        self.stream
            .get_mut()
            .write_all(b"go\n")
            .await
            .map_err(|e| handover(&peer, format!("cannot say \"go\": {e}")))?;
        let answer = read_line(&mut self.stream, GONE_WAIT)
            .await
            .map_err(|e| handover(&peer, e.to_string()))?;
        if answer == "gone" {
            Ok(())
        } else {
            Err(handover(
                &peer,
                format!("expected \"gone\", got {answer:?}"),
            ))
        }
    }
}

/// Asks the agent of this network namespace `word` (a line) and returns
/// its one-line answer; `Ok(None)` when no agent runs here.
pub fn ask(word: &str) -> std::io::Result<Option<String>> {
    use std::io::Write;
    let addr = SocketAddr::from_abstract_name(NAME)?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(ANSWER_WAIT + Duration::from_secs(1)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut pid = String::new();
    reader.read_line(&mut pid)?;
    stream.write_all(format!("{word}\n").as_bytes())?;
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other(format!(
            "weftd (pid {}) gave no answer to {word:?}",
            pid.trim()
        )));
    }
    Ok(Some(answer.trim_end().to_string()))
}

fn address() -> Result<SocketAddr, InstanceError> {
    SocketAddr::from_abstract_name(NAME).map_err(InstanceError::Io)
}

fn handover(peer: &str, what: String) -> InstanceError {
    InstanceError::Handover {
        peer: peer.to_string(),
        what,
    }
}

/// One line (without its newline) within `wait`.
async fn read_line(
    stream: &mut BufReader<tokio::net::UnixStream>,
    wait: Duration,
) -> Result<String, InstanceError> {
    let mut line = String::new();
    match tokio::time::timeout(wait, stream.read_line(&mut line)).await {
        Err(_) => Err(handover("", format!("no answer within {wait:?}"))),
        Ok(Err(e)) => Err(handover("", format!("cannot read: {e}"))),
        Ok(Ok(0)) => Err(handover("", "the other side closed the connection".into())),
        Ok(Ok(_)) => Ok(line.trim().to_string()),
    }
}

/// The pid the holder answers with, if it answers within a second.
fn holder_pid(addr: &SocketAddr) -> Option<u32> {
    let stream = UnixStream::connect_addr(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .ok()?;
    answer.trim().parse().ok()
}
