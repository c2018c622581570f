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
