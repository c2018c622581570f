//! A `ping` running in a pod while something changes (a restart, a
//! takeover), and what it counted.

use std::net::IpAddr;

use anyhow::{bail, Context};
use weft_netns::Netns;

/// A `ping` every 10 ms running in a pod while the lab changes something.
pub struct Pinger {
    child: Option<std::process::Child>,
}

/// What a [`Pinger`] counted.
#[derive(Debug, Clone)]
pub struct PingSummary {
    /// Echo requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// ping's own summary.
    pub text: String,
}

impl PingSummary {
    /// Requests without a reply.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

impl Pinger {
    /// Starts `count` pings 10 ms apart (each waiting at most 1 s) from `from` to `to`.
    pub fn start(from: &Netns, to: impl Into<IpAddr>, count: u32) -> anyhow::Result<Pinger> {
        Self::start_with(from.command(&["ping"]), to, count)
    }

    /// The same with `ping`, a command that runs ping in the source's
    /// namespace (e.g. through `nsenter` into a pod).
    pub fn start_with(
        mut ping: std::process::Command,
        to: impl Into<IpAddr>,
        count: u32,
    ) -> anyhow::Result<Pinger> {
        let (to, count) = (to.into().to_string(), count.to_string());
        let child = ping
            .args(["-i", "0.01", "-c", &count, "-W", "1", "-q", &to])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start ping")?;
        Ok(Pinger { child: Some(child) })
    }

    /// Whether it is still pinging.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Ends it now (SIGINT: ping prints its summary) and returns the counts.
    pub fn stop(mut self) -> anyhow::Result<PingSummary> {
        if let Some(child) = self.child.as_ref() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
        self.finish_now()
    }

    /// Waits for the last ping and returns the counts.
    pub fn finish(mut self) -> anyhow::Result<PingSummary> {
        self.finish_now()
    }

    fn finish_now(&mut self) -> anyhow::Result<PingSummary> {
        let out = self
            .child
            .take()
            .context("ping already waited for")?
            .wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no summary from ping: {text}"))?;
        let mut nums = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(str::parse::<u64>);
        let (Some(Ok(sent)), Some(Ok(received))) = (nums.next(), nums.next()) else {
            bail!("cannot read ping's summary: {line}");
        };
        Ok(PingSummary {
            sent,
            received,
            text,
        })
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
