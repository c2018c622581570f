//! weft's lab, end-to-end harness and benchmarks: clusters built out of
//! network namespaces (never the machine's own), programmed by weft.

pub mod bench;
pub mod bench_agent;
pub mod bench_cni;
pub mod bench_lab_tput;
pub mod bench_nat;
pub mod bench_scale;
pub mod bench_udp;
pub mod cluster;
pub mod cni_call;
pub mod flannel_node;
pub mod kube_api;
pub mod lab;
pub mod node_api;
pub mod overlay_agent;
pub mod pinger;
pub mod topology;
pub mod up_down;
pub mod weftd;
pub mod witness;

pub use overlay_agent::OverlayAgent;
pub use topology::{seed_nodes, Cluster, Node, NodeSpec};
