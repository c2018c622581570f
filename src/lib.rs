//! weft: a Kubernetes node-networking agent, a drop-in replacement for
//! flannel. This package holds the agent `weftd` (configuration, the
//! Kubernetes subnet manager, `subnet.env`, health) on top of the two
//! data-plane subsystems, `weft-overlay` and `weft-nat`.

pub mod agent;
pub mod cni;
pub mod config;
pub mod health;
pub mod metrics;
pub mod status;
pub mod subnet;
pub mod subnet_env;
pub mod trace;
