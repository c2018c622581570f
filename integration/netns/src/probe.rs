//! A connection tester: which source address does a listener in one
//! namespace see when another namespace connects to it? That is how NAT is
//! proven (masqueraded or not), with plain TCP on our own addresses.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Netns, Result};

/// The port the probe listens on.
pub const PROBE_PORT: u16 = 7777;

/// Listens in `listener` on `listen_ip`, connects from `from` to
/// `connect_to` (the same address, or one that leads there), and returns the
/// source address the listener saw; `None` if the connection failed
/// (3 s timeout).
pub fn seen_source(
    listener: &Netns,
    listen_ip: IpAddr,
    from: &Netns,
    connect_to: IpAddr,
) -> Result<Option<IpAddr>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = listener.spawn_task(move || async move {
        let l = match bind_probe(listen_ip) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return None;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let (mut s, peer) = l.accept().ok()?;
        let mut buf = [0u8; 2];
        let _ = s.read(&mut buf);
        Some(peer.ip())
    })?;
    // The listener always says whether it could bind: wait for that (a
    // timeout here would leave it listening, and the next probe would find
    // the port taken).
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = server.join();
            return Err(crate::Error::Io {
                context: format!("cannot listen on {listen_ip}:{PROBE_PORT}"),
                source: e,
            });
        }
        Err(_) => {
            let _ = server.join();
            return Ok(None);
        }
    }
    let connected = from.run(move || async move {
        let addr = SocketAddr::new(connect_to, PROBE_PORT);
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut s) => s.write_all(b"hi").is_ok(),
            Err(_) => false,
        }
    })?;
    if !connected {
        // Unblock the listener with a local connection, then forget its answer.
        let _ = listener
            .run(move || async move { TcpStream::connect((listen_ip, PROBE_PORT)).map(|_| ()) });
        let _ = server.join();
        return Ok(None);
    }
    server.join()
}

/// Binds the probe's port, waiting up to 2 s while it is still taken (seen
/// once in a few hundred probes under load in CI, cause not found yet: the
/// line printed says when it happens).
fn bind_probe(ip: IpAddr) -> std::io::Result<TcpListener> {
    let t0 = std::time::Instant::now();
    loop {
        match TcpListener::bind((ip, PROBE_PORT)) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && t0.elapsed() < Duration::from_secs(2) =>
            {
                eprintln!("probe: {ip}:{PROBE_PORT} still in use; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
