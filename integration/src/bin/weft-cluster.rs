//! `just cluster`: a real Kubernetes cluster on this machine — kube-apiserver,
//! controller-manager and scheduler, N nodes each running containerd,
//! kubelet and kube-proxy in their own namespaces, an outside host — with
//! weft deployed from its manifest and image, as a user deploys it. Prints
//! the nodes, weft's pods and the connectivity matrix (Services included),
//! then removes everything (also on failure or Ctrl-C). `up` keeps the
//! cluster for exploration; `down` removes a cluster left up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use weft_integration::cluster::deploy::{self, Manifest};
use weft_integration::cluster::{
    self, checks, default_nodes, workload, Cluster, ClusterSpec, MANIFEST_IMAGE,
};
use weft_integration::up_down;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Action {
    /// Build the cluster, deploy weft, print everything, and keep it until
    /// `just cluster down` or Ctrl-C.
    Up,
    /// Remove the cluster that `just cluster up` left running.
    Down,
    /// Only build weft's image (an OCI archive for `ctr images import`,
    /// `podman load`, …) and print where it is.
    Image,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ManifestArg {
    /// manifests/legacy (NAT through the node's iptables, or nftables where
    /// kube-proxy uses it).
    Legacy,
    /// manifests/nftables.
    Nftables,
}

/// A real Kubernetes cluster in network namespaces, networked by weft.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Without an action: build, check and remove.
    action: Option<Action>,
    /// How many nodes (node1: iptables-legacy + kube-proxy iptables, node2:
    /// iptables-nft + kube-proxy iptables, node3: kube-proxy nftables, more
    /// like node2).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    nodes: u8,
    /// Which of weft's manifests to apply.
    #[arg(long, value_enum, default_value_t = ManifestArg::Legacy)]
    manifest: ManifestArg,
    /// Kubernetes binaries (kubelet, kube-proxy, …, plain or as NAME.xz,
    /// e.g. the official server release's kubernetes/server/bin); what it
    /// lacks comes from ../shared/kube.
    #[arg(long, env = "WEFT_KUBE_DIR")]
    kube_dir: Option<PathBuf>,
    /// Where weftd and weft-cni were built.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

/// The name `up` is recorded under.
const UP: &str = "weft-cluster";

fn main() -> ExitCode {
    let args = Args::parse();
    cluster::install_interrupt_handler();
    if args.action == Some(Action::Down) {
        return match down() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-cluster down: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if args.action == Some(Action::Image) {
        return match image(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-cluster image: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weft-cluster: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let began = Instant::now();
    let manifest = match args.manifest {
        ManifestArg::Legacy => Manifest::Legacy,
        ManifestArg::Nftables => Manifest::Nftables,
    };
    let spec = ClusterSpec {
        nodes: default_nodes(args.nodes),
        kube_dir: args.kube_dir.clone(),
        weft_bin_dir: args
            .bin_dir
            .canonicalize()
            .with_context(|| format!("--bin-dir {}", args.bin_dir.display()))?,
        weft_image: MANIFEST_IMAGE.to_string(),
    };
    println!("== building the cluster ({} nodes)", spec.nodes.len());
    let mut cluster = Cluster::up(&spec)?;
    println!(
        "   images {:.1?}, control plane {:.1?}, nodes {:.1?}",
        cluster.timings.images, cluster.timings.control_plane, cluster.timings.nodes
    );
    for n in cluster.nodes() {
        println!("   {} ({}): {}", n.spec.name, n.spec.ip, n.spec.describe());
    }
    println!(
        "\n== deploying weft: manifests/{}/kube-weft.yml, image {}",
        manifest.name(),
        spec.weft_image
    );
    let took = match cluster.deploy_weft(manifest, &spec.weft_image) {
        Ok(took) => took,
        Err(e) => {
            eprintln!("{}", cluster.diagnose());
            return Err(e);
        }
    };
    println!("   weft's pods running and every node Ready after {took:.1?}");
    let kubectl = cluster.kubectl()?.clone();
    println!("\n$ kubectl get nodes -o wide");
    print!("{}", kubectl.run(&["get", "nodes", "-o", "wide"])?);
    println!("\n$ kubectl -n {} get pods -o wide", deploy::NAMESPACE);
    print!(
        "{}",
        kubectl.run(&["-n", deploy::NAMESPACE, "get", "pods", "-o", "wide"])?
    );
    println!("\n== NAT mode weft chose on each node");
    for n in cluster.nodes() {
        let line = cluster.nat_mode(&n.spec.name)?;
        let short = line
            .split_once("NAT mode")
            .map_or(line.as_str(), |(_, r)| r);
        println!("   {}: {}", n.spec.name, short.trim());
    }
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.spec.name.clone())
        .collect();
    workload::create_web(&kubectl, &names, &cluster.images().workload.reference)?;
    let t = Instant::now();
    let matrix = checks::run(&cluster)?;
    println!("\n== connectivity ({:.1?})", t.elapsed());
    print!("{}", matrix.render());
    cluster.check_processes()?;
    let ok = matrix.all_ok();
    if args.action == Some(Action::Up) {
        up_banner(&cluster, &kubectl)?;
        up_down::record(UP)?;
        cluster::wait_for_interrupt();
        up_down::forget(UP);
    }
    println!("\n== removing the cluster");
    let t = Instant::now();
    cluster.down();
    println!(
        "   removed in {:.1?}; {} in {:.1?}",
        t.elapsed(),
        if ok {
            "every check passed"
        } else {
            "SOME CHECKS FAILED"
        },
        began.elapsed()
    );
    Ok(ok)
}

fn image(args: &Args) -> anyhow::Result<()> {
    let bin_dir = args
        .bin_dir
        .canonicalize()
        .with_context(|| format!("--bin-dir {}", args.bin_dir.display()))?;
    let t = Instant::now();
    let archive = cluster::image::weft_image(MANIFEST_IMAGE, &bin_dir)?;
    println!(
        "{} ({}) in {:.1?}",
        archive.path.display(),
        archive.reference,
        t.elapsed()
    );
    println!(
        "import it on a node: ctr -n k8s.io images import {}",
        archive.path.display()
    );
    Ok(())
}

fn up_banner(cluster: &Cluster, kubectl: &cluster::Kubectl) -> anyhow::Result<()> {
    println!(
        "\n== the cluster is up ({}). In another terminal:",
        cluster.dir().display()
    );
    println!("   alias kubectl='{}'", kubectl.shell_line());
    println!("   kubectl get pods -A -o wide");
    println!("   kubectl exec web-node1 -- wget -qO- http://<pod IP>:8080/");
    if let Some(n) = cluster.nodes().first() {
        println!(
            "   nsenter -t {} -m -n -u bash     # a shell on {} (its mounts, network, hostname)",
            n.holder_pid(),
            n.spec.name
        );
        println!(
            "   ip netns exec {} bash            # only its network",
            n.ns.name()
        );
    }
    println!("   just cluster down    # removes it (or Ctrl-C here)");
    Ok(())
}

/// Stops the cluster that `up` left running: SIGTERM to it, then wait until
/// it has removed everything; then sweeps what dead runs left.
fn down() -> anyhow::Result<()> {
    let was_up = up_down::stop_recorded(UP, std::time::Duration::from_secs(60))?;
    cluster::sweep_stale();
    if was_up {
        println!("the cluster is down");
    } else {
        println!("no cluster is up; stale state swept");
    }
    Ok(())
}
