//! The subnet manager: flannel's Node annotations and the Kubernetes API.

pub mod annotations;
pub mod index;
pub mod kube;
pub mod projection;

pub use annotations::{Annotations, NodeError};
