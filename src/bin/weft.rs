//! `weft`: looking at the node weftd runs on. Run it on the node (or
//! `kubectl exec -n kube-flannel <weft pod> -- weft status`): it talks to
//! weftd over the node's agent socket (`@weft/agent`) and reads the kernel
//! itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft::agent::instance;
use weft::status::{check, render, Status};

#[derive(Parser)]
#[command(name = "weft", about = "Look at what weft does on this node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// This node's leases, NAT mode, peers and their kernel objects, skipped
    /// Nodes, and any drift between what weftd wants and what the kernel has.
    Status {
        /// Print JSON (the status and the kernel check) instead of text.
        #[arg(long)]
        json: bool,
        /// The subnet file to read when weftd is not running.
        #[arg(long, default_value = "/run/flannel/subnet.env")]
        subnet_file: PathBuf,
    },
    /// Walk a packet from one address to another, hop by hop, as the
    /// commands a person would run on each (`ip route get`, `ip neigh`,
    /// `bridge fdb` …), and name the hop where it is lost. On a node it
    /// reads that node and says where the packet leaves it; with `--netns`
    /// it reads each namespace given (the lab's nodes and pods).
    Trace {
        /// The source address (a pod, or a node for host-network traffic).
        src: std::net::IpAddr,
        /// The destination address.
        dst: std::net::IpAddr,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A network namespace to read: a name under /var/run/netns or a
        /// path (repeat it for each).
        #[arg(long)]
        netns: Vec<String>,
        /// Read every namespace under /var/run/netns whose name starts
        /// with this (e.g. a lab's `weft-<pid>-`).
        #[arg(long)]
        netns_prefix: Option<String>,
        /// The subnet file naming the cluster networks when weftd does not
        /// answer.
        #[arg(long, default_value = "/run/flannel/subnet.env")]
        subnet_file: PathBuf,
    },
    /// For debugging: pause or resume weftd's repairs (nothing is written
    /// while paused; what changed meanwhile is reconciled on resuming).
    Debug {
        #[command(subcommand)]
        what: Debug,
    },
}

#[derive(Subcommand)]
enum Debug {
    /// Stop reconciling the overlay until `resume`.
    Pause,
    /// Reconcile again.
    Resume,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Status { json, subnet_file } => runtime.block_on(status(json, &subnet_file)),
        Command::Trace {
            src,
            dst,
            json,
            netns,
            netns_prefix,
            subnet_file,
        } => {
            let netns = match namespaces(&netns, netns_prefix.as_deref()) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("weft: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let scope = weft::trace::Scope {
                netns,
                subnet_file: Some(subnet_file),
            };
            runtime.block_on(trace(&scope, src, dst, json))
        }
        Command::Debug { what } => {
            let word = match what {
                Debug::Pause => "pause",
                Debug::Resume => "resume",
            };
            match instance::ask(word) {
                Ok(Some(_)) => {
                    println!(
                        "weftd: repairs {}",
                        if word == "pause" { "paused" } else { "resumed" }
                    );
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("weft: weftd is not running on this node");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("weft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn status(json: bool, subnet_file: &std::path::Path) -> ExitCode {
    let answer = match instance::ask(instance::STATUS) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft: weftd did not answer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(answer) = answer else {
        // No weftd here: say so, and show what the kernel holds.
        let view = weft::status::kernel_view(subnet_file).await;
        if json {
            println!("{}", serde_json::json!({ "weftd": null, "kernel": view }));
        } else {
            println!(
                "weftd is not running on this node (nobody holds the agent socket @weft/agent)."
            );
            println!(
                "What the kernel holds of weft's (networks from {}):",
                subnet_file.display()
            );
            print!("{view}");
        }
        return ExitCode::from(3);
    };
    let status: Status = match serde_json::from_str(&answer) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft: weftd's answer is not a status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = check(&status).await;
    let drift = checks
        .iter()
        .flat_map(|c| &c.findings)
        .any(|f| f.state != "ok");
    if json {
        println!(
            "{}",
            serde_json::json!({ "status": status, "kernel": checks, "drift": drift })
        );
    } else {
        print!("{}", render(&status, &checks));
    }
    // 0: all as wanted; 2: drift (being repaired, or paused).
    if drift {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The namespaces named, then those under /var/run/netns with the prefix.
fn namespaces(names: &[String], prefix: Option<&str>) -> Result<Vec<PathBuf>, String> {
    const DIR: &str = "/var/run/netns";
    let mut out: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            if n.contains('/') {
                PathBuf::from(n)
            } else {
                std::path::Path::new(DIR).join(n)
            }
        })
        .collect();
    if let Some(prefix) = prefix {
        let entries = std::fs::read_dir(DIR).map_err(|e| format!("{DIR}: {e}"))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        if found.is_empty() {
            return Err(format!("no namespace under {DIR} starts with {prefix:?}"));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

async fn trace(
    scope: &weft::trace::Scope,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    json: bool,
) -> ExitCode {
    let t = match weft::trace::run(scope, src, dst).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&t) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{t}");
    }
    // 0: the packet gets through (or leaves as it should); 2: a fault.
    if t.fault().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
