//! The cluster as the agent follows it: this Node, and every other Node's
//! lease, kept from the watch's events one at a time.
//!
//! Each event costs work for the one Node it carries: its lease is parsed
//! and compared with the one held, and only a difference becomes a
//! [`PeerChange`] for the overlay. Nothing else of a Node is kept (the
//! watch's objects are projected first, see `projection`), and no store of
//! Node objects exists beside this index. A (re)list is compared Node by
//! Node with what is held, so a watch that resumes after an outage changes
//! only what changed while it was away.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use weft_overlay::Lease;

use super::Annotations;

/// What the overlay must hear of a Node event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A node's lease is new or changed.
    Upsert(Lease),
    /// A node's lease is gone (the Node, or its annotations, went away).
    Remove(String),
}

/// The followed cluster (see the module docs).
pub struct NodeIndex {
    own_name: String,
    annotations: Annotations,
    own: Option<Arc<Node>>,
    /// Each peer's lease, with the order it was first seen in.
    leases: HashMap<String, (u64, Lease)>,
    next_seq: u64,
    /// Nodes skipped for bad data, with the reason (logged once per reason).
    skipped: HashMap<String, String>,
}

impl NodeIndex {
    /// An empty index for the node `own_name`.
    pub fn new(own_name: &str, annotations: Annotations) -> NodeIndex {
        NodeIndex {
            own_name: own_name.to_string(),
            annotations,
            own: None,
            leases: HashMap::new(),
            next_seq: 0,
            skipped: HashMap::new(),
        }
    }

    /// Every peer's lease, oldest first (in the order first seen; a list is
    /// taken in creation order).
    pub fn leases(&self) -> Vec<Lease> {
        let mut all: Vec<&(u64, Lease)> = self.leases.values().collect();
        all.sort_unstable_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, l)| l.clone()).collect()
    }

    /// This node, as last seen.
    pub fn own(&self) -> Option<Arc<Node>> {
        self.own.clone()
    }

    /// Number of peers with a usable lease.
    pub fn peers(&self) -> usize {
        self.leases.len()
    }

    /// The Node was added or modified.
    pub fn applied(&mut self, node: Node) -> Option<PeerChange> {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self.own_name {
            self.own = Some(Arc::new(node));
            return None;
        }
        let lease = match self.annotations.lease(&node) {
            Ok(lease) => {
                if self.skipped.remove(&name).is_some() {
                    tracing::info!(node = %name, "node usable again");
                }
                lease
            }
            Err(e) => {
                let why = e.to_string();
                if self.skipped.get(&name) != Some(&why) {
                    tracing::warn!(node = %name, error = %why, "skipping node");
                    self.skipped.insert(name.clone(), why);
                }
                None
            }
        };
        match lease {
            Some(lease) => {
                let seq = match self.leases.get(&name) {
                    Some((_, held)) if *held == lease => return None,
                    Some((seq, _)) => *seq,
                    None => {
                        self.next_seq += 1;
                        self.next_seq
                    }
                };
                self.leases.insert(name, (seq, lease.clone()));
                Some(PeerChange::Upsert(lease))
            }
            None => self.leases.remove(&name).map(|_| PeerChange::Remove(name)),
        }
    }

    /// The Node was deleted.
    pub fn deleted(&mut self, node: &Node) -> Option<PeerChange> {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self.own_name {
            self.own = None;
            return None;
        }
        if self.skipped.remove(&name).is_some() {
            tracing::info!(node = %name, "skipped node deleted");
        }
        self.leases.remove(&name).map(|_| PeerChange::Remove(name))
    }

    /// A full list (the first, or after the watch was lost): the changes
    /// that bring the index to it, removals first, then the Nodes oldest
    /// first (so the first claimant of a subnet keeps it).
    pub fn listed(&mut self, mut nodes: Vec<Node>) -> Vec<PeerChange> {
        let present: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let gone: Vec<String> = self
            .leases
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        self.skipped.retain(|n, _| present.contains(n));
        if !present.contains(&self.own_name) {
            self.own = None;
        }
        let mut changes: Vec<PeerChange> = gone
            .into_iter()
            .filter_map(|n| self.leases.remove(&n).map(|_| PeerChange::Remove(n)))
            .collect();
        let key = |n: &Node| {
            (
                n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                n.metadata.name.as_deref().map(str::to_owned),
            )
        };
        // One key per Node (not two clones per comparison).
        nodes.sort_by_cached_key(key);
        changes.extend(nodes.into_iter().filter_map(|n| self.applied(n)));
        changes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn node(name: &str, created: &str, subnet: &str, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "creationTimestamp": created,
                "annotations": {
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:01\"}",
                    "flannel.alpha.coreos.com/public-ip": ip,
                }
            },
            "spec": {"podCIDR": subnet}
        }))
        .unwrap()
    }

    fn index() -> NodeIndex {
        NodeIndex::new(
            "self",
            Annotations::new("flannel.alpha.coreos.com").unwrap(),
        )
    }

    fn names(changes: &[PeerChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                PeerChange::Upsert(l) => format!("+{}", l.node),
                PeerChange::Remove(n) => format!("-{n}"),
            })
            .collect()
    }

    #[test]
    fn the_first_list_gives_every_peer_oldest_first_and_keeps_this_node_apart() {
        let mut ix = index();
        let changes = ix.listed(vec![
            node("b", "2026-01-02T00:00:00Z", "10.244.2.0/24", "172.18.0.3"),
            node(
                "self",
                "2026-01-01T00:00:00Z",
                "10.244.0.0/24",
                "172.18.0.1",
            ),
            node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "172.18.0.2"),
        ]);
        assert_eq!(names(&changes), ["+b", "+a"]);
        assert!(ix.own().is_some());
        assert_eq!(ix.peers(), 2);
        let order: Vec<String> = ix.leases().into_iter().map(|l| l.node).collect();
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn an_event_changes_only_its_node_and_an_unchanged_one_nothing() {
        let mut ix = index();
        ix.listed(vec![node(
            "a",
            "2026-01-03T00:00:00Z",
            "10.244.1.0/24",
            "172.18.0.2",
        )]);
        let same = node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "172.18.0.2");
        assert_eq!(ix.applied(same), None);
        let moved = node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "172.18.0.9");
        assert_eq!(names(&[ix.applied(moved).unwrap()]), ["+a"]);
        let mut broken = node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "x");
        broken.metadata.name = Some("a".into());
        assert_eq!(names(&[ix.applied(broken).unwrap()]), ["-a"]);
        assert_eq!(
            ix.deleted(&node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "x")),
            None
        );
    }

    #[test]
    fn a_relist_changes_only_what_changed_while_away() {
        let mut ix = index();
        ix.listed(vec![
            node("a", "2026-01-01T00:00:00Z", "10.244.1.0/24", "172.18.0.2"),
            node("b", "2026-01-02T00:00:00Z", "10.244.2.0/24", "172.18.0.3"),
        ]);
        let changes = ix.listed(vec![
            node("b", "2026-01-02T00:00:00Z", "10.244.2.0/24", "172.18.0.3"),
            node("c", "2026-01-04T00:00:00Z", "10.244.3.0/24", "172.18.0.4"),
        ]);
        assert_eq!(names(&changes), ["-a", "+c"]);
    }
}
