//! weftd: the node agent (flanneld's drop-in replacement).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use weft::config::{Flags, FlagsError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let flags = match Flags::parse_from_env(std::env::args_os()) {
        Ok(f) => f,
        Err(FlagsError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("weftd: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(flags.verbosity);
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbosity: u8) {
    // At the default level, third-party crates' INFO chatter (rustables'
    // parser notes every attribute it skips) is cut to warnings; -v or
    // RUST_LOG show everything.
    let default = match verbosity {
        0 => "info,rustables=warn",
        1 | 2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a container's log is a file, and escape
    // codes there garble `kubectl logs` and log collectors.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = match &flags.kubeconfig_file {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig-file {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig-file {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster (--kubeconfig-file?)")?,
    };
    if let Some(url) = &flags.kube_api_url {
        config.cluster_url = url
            .parse()
            .with_context(|| format!("--kube-api-url {url:?}"))?;
    }
    // kube's built-in retry of 429/503 answers backs off for minutes in total,
    // holding a request the whole time; weftd's Node watch has its own
    // capped backoff and start-up errors restart the pod, as with flanneld.
    config.default_retry = false;
    // A connection the API server never answers is given up after 5 s, not
    // kube's 30 s: the request fails and is retried on a fresh connection.
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    let client = kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
    let env: HashMap<String, String> = std::env::vars().collect();
    weft::agent::run(flags, client, env, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received");
}
