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
use weft_overlay::{Family, Lease, PerFamily};

use super::annotations::{pod_cidr, NodeError};
use super::Annotations;

/// What the overlay of one family must hear of a Node event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A node's lease is new or changed (its subnet says which family).
    Upsert(Lease),
    /// A node's lease of `family` is gone (the Node, or its annotations, went away).
    Remove {
        /// The family whose lease is gone.
        family: Family,
        /// The node.
        node: String,
    },
}

impl PeerChange {
    /// The family whose overlay must hear it.
    pub fn family(&self) -> Family {
        match self {
            PeerChange::Upsert(lease) => Family::of_net(&lease.subnet),
            PeerChange::Remove { family, .. } => *family,
        }
    }
}

/// The followed cluster (see the module docs).
pub struct NodeIndex {
    own_name: String,
    annotations: Annotations,
    /// The families the cluster runs (net-conf.json).
    enabled: Vec<Family>,
    own: Option<Arc<Node>>,
    /// Each peer's leases, with the order it was first seen in.
    leases: HashMap<String, (u64, PerFamily<Lease>)>,
    next_seq: u64,
    /// Nodes (and families) skipped for bad data, with the reason (logged
    /// once per reason).
    skipped: HashMap<(String, Family), String>,
    /// Nodes without flannel's annotations (weft or flanneld has not
    /// started there yet).
    waiting: BTreeSet<String>,
}

impl NodeIndex {
    /// An empty index for the node `own_name` in a cluster of the `enabled` families.
    pub fn new(own_name: &str, annotations: Annotations, enabled: &[Family]) -> NodeIndex {
        NodeIndex {
            own_name: own_name.to_string(),
            annotations,
            enabled: enabled.to_vec(),
            own: None,
            leases: HashMap::new(),
            next_seq: 0,
            skipped: HashMap::new(),
            waiting: BTreeSet::new(),
        }
    }

    /// Every peer's lease of `family`, oldest first (in the order first
    /// seen; a list is taken in creation order).
    pub fn leases(&self, family: Family) -> Vec<Lease> {
        let mut all: Vec<(u64, &Lease)> = self
            .leases
            .values()
            .filter_map(|(seq, l)| l.get(family).map(|l| (*seq, l)))
            .collect();
        all.sort_unstable_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, l)| l.clone()).collect()
    }

    /// This node, as last seen.
    pub fn own(&self) -> Option<Arc<Node>> {
        self.own.clone()
    }

    /// Every skipped Node with its family and the reason, sorted.
    pub fn skipped_nodes(&self) -> Vec<(String, Family, String)> {
        let mut out: Vec<_> = self
            .skipped
            .iter()
            .map(|((n, f), why)| (n.clone(), *f, why.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
        out
    }

    /// Nodes without flannel's annotations yet.
    pub fn waiting(&self) -> impl Iterator<Item = &String> {
        self.waiting.iter()
    }

    /// How many Nodes are skipped for `family` now.
    pub fn skipped(&self, family: Family) -> usize {
        self.skipped.keys().filter(|(_, f)| *f == family).count()
    }

    /// Number of peers with a usable lease (of any family).
    pub fn peers(&self) -> usize {
        self.leases.len()
    }

    /// The Node was added or modified: the changes, one per family at most.
    pub fn applied(&mut self, node: Node) -> Vec<PeerChange> {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self.own_name {
            self.own = Some(Arc::new(node));
            return Vec::new();
        }
        if self.annotations.is_managed(&node) {
            self.waiting.remove(&name);
        } else {
            self.waiting.insert(name.clone());
        }
        let mut wanted = PerFamily::default();
        for family in Family::ALL {
            let lease = if self.enabled.contains(&family) {
                self.annotations.lease(&node, family)
            } else {
                self.foreign_family(&node, &name, family).map(|()| None)
            };
            let lease = match lease {
                Ok(lease) => {
                    if self.skipped.remove(&(name.clone(), family)).is_some() {
                        tracing::info!(node = %name, %family, "node usable again");
                    }
                    lease
                }
                Err(e) => {
                    let why = e.to_string();
                    let key = (name.clone(), family);
                    if self.skipped.get(&key) != Some(&why) {
                        tracing::warn!(node = %name, %family, error = %why, "skipping node's lease");
                        self.skipped.insert(key, why);
                    }
                    None
                }
            };
            wanted.set(family, lease);
        }
        let held = self.leases.get(&name);
        let mut changes = Vec::new();
        for family in Family::ALL {
            let before = held.and_then(|(_, l)| l.get(family));
            match (before, wanted.get(family)) {
                (Some(a), Some(b)) if a == b => {}
                (_, Some(b)) => changes.push(PeerChange::Upsert(b.clone())),
                (Some(_), None) => changes.push(PeerChange::Remove {
                    family,
                    node: name.clone(),
                }),
                (None, None) => {}
            }
        }
        if wanted.is_empty() {
            self.leases.remove(&name);
        } else if !changes.is_empty() {
            let seq = match held {
                Some((seq, _)) => *seq,
                None => {
                    self.next_seq += 1;
                    self.next_seq
                }
            };
            self.leases.insert(name, (seq, wanted));
        }
        changes
    }

    /// A lease of a family the cluster does not run (a v6 podCIDR with v6
    /// annotations while net-conf.json has no IPv6Network): named, not used.
    /// A podCIDR of that family alone is Kubernetes' dual-stack with a
    /// single-stack overlay, and no fault.
    fn foreign_family(&self, node: &Node, name: &str, family: Family) -> Result<(), NodeError> {
        let a = &self.annotations;
        if !a.is_managed(node) || !a.publishes(node, family) {
            return Ok(());
        }
        match pod_cidr(node, family) {
            Ok(subnet) => Err(NodeError {
                node: name.to_string(),
                field: a.public_ip(family),
                reason: format!(
                    "an {family} lease ({subnet}) in a cluster without {family}: net-conf.json does not enable it; ignored"
                ),
            }),
            Err(_) => Ok(()),
        }
    }

    /// The Node was deleted.
    pub fn deleted(&mut self, node: &Node) -> Vec<PeerChange> {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self.own_name {
            self.own = None;
            return Vec::new();
        }
        self.waiting.remove(&name);
        let before = self.skipped.len();
        self.skipped.retain(|(n, _), _| *n != name);
        if self.skipped.len() != before {
            tracing::info!(node = %name, "skipped node deleted");
        }
        removals(&name, self.leases.remove(&name))
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
        self.skipped.retain(|(n, _), _| present.contains(n));
        self.waiting.retain(|n| present.contains(n));
        if !present.contains(&self.own_name) {
            self.own = None;
        }
        let mut changes: Vec<PeerChange> = gone
            .into_iter()
            .flat_map(|n| {
                let held = self.leases.remove(&n);
                removals(&n, held)
            })
            .collect();
        let key = |n: &Node| {
            (
                n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                n.metadata.name.as_deref().map(str::to_owned),
            )
        };
        // One key per Node (not two clones per comparison).
        nodes.sort_by_cached_key(key);
        for n in nodes {
            changes.extend(self.applied(n));
        }
        changes
    }
}

/// The removals of every lease a node held.
fn removals(name: &str, held: Option<(u64, PerFamily<Lease>)>) -> Vec<PeerChange> {
    held.map(|(_, leases)| {
        leases
            .iter()
            .map(|(family, _)| PeerChange::Remove {
                family,
                node: name.to_string(),
            })
            .collect()
    })
    .unwrap_or_default()
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
            &[Family::V4],
        )
    }

    fn names(changes: &[PeerChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                PeerChange::Upsert(l) => format!("+{}", l.node),
                PeerChange::Remove { node, .. } => format!("-{node}"),
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
        let order: Vec<String> = ix.leases(Family::V4).into_iter().map(|l| l.node).collect();
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
        assert_eq!(ix.applied(same), []);
        let moved = node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "172.18.0.9");
        assert_eq!(names(&ix.applied(moved)), ["+a"]);
        let mut broken = node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "x");
        broken.metadata.name = Some("a".into());
        assert_eq!(names(&ix.applied(broken)), ["-a"]);
        assert_eq!(
            ix.deleted(&node("a", "2026-01-03T00:00:00Z", "10.244.1.0/24", "x")),
            []
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

    /// `node()` made dual-stack: a v6 podCIDR and v6 annotations.
    fn dual(name: &str, created: &str, v4: &str, v6: &str) -> Node {
        let mut n = node(name, created, v4, "172.18.0.9");
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec![v4.into(), v6.into()]);
        let ann = n.metadata.annotations.as_mut().unwrap();
        ann.insert(
            "flannel.alpha.coreos.com/backend-v6-data".into(),
            "{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:02\"}".into(),
        );
        ann.insert(
            "flannel.alpha.coreos.com/public-ipv6".into(),
            "fd00::9".into(),
        );
        n
    }

    fn dual_index() -> NodeIndex {
        NodeIndex::new(
            "self",
            Annotations::new("flannel.alpha.coreos.com").unwrap(),
            &[Family::V4, Family::V6],
        )
    }

    #[test]
    fn a_dual_stack_node_gives_one_lease_per_family() {
        let mut ix = dual_index();
        let changes = ix.listed(vec![dual(
            "a",
            "2026-01-01T00:00:00Z",
            "10.244.1.0/24",
            "fc00:0:0:1::/64",
        )]);
        let families: Vec<Family> = changes.iter().map(PeerChange::family).collect();
        assert_eq!(families, [Family::V4, Family::V6]);
        assert_eq!(
            ix.leases(Family::V6)[0].subnet.to_string(),
            "fc00:0:0:1::/64"
        );
        assert_eq!(ix.leases(Family::V6)[0].public_ip.to_string(), "fd00::9");
        // Its v6 annotation removed: the v6 lease goes, the v4 one stays.
        let mut n = dual(
            "a",
            "2026-01-01T00:00:00Z",
            "10.244.1.0/24",
            "fc00:0:0:1::/64",
        );
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("flannel.alpha.coreos.com/public-ipv6");
        let changes = ix.applied(n);
        assert_eq!(
            changes,
            [PeerChange::Remove {
                family: Family::V6,
                node: "a".into()
            }]
        );
        assert_eq!(ix.leases(Family::V4).len(), 1);
        assert!(ix.skipped.contains_key(&("a".to_string(), Family::V6)));
        // Deleted: both gone.
        let gone = ix.deleted(&node("a", "2026-01-01T00:00:00Z", "10.244.1.0/24", "x"));
        assert_eq!(names(&gone), ["-a"]);
        assert!(ix.skipped.is_empty());
    }

    #[test]
    fn a_v6_lease_in_a_v4_only_cluster_is_named_and_ignored() {
        let mut ix = index();
        let changes = ix.listed(vec![dual(
            "a",
            "2026-01-01T00:00:00Z",
            "10.244.1.0/24",
            "fc00:0:0:1::/64",
        )]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].family(), Family::V4);
        let why = &ix.skipped[&("a".to_string(), Family::V6)];
        assert!(
            why.contains("node a: flannel.alpha.coreos.com/public-ipv6"),
            "{why}"
        );
        // Kubernetes' dual-stack under a v4-only overlay: a v6 podCIDR alone is no fault.
        let mut ix = index();
        let mut n = node("b", "2026-01-01T00:00:00Z", "10.244.2.0/24", "172.18.0.3");
        n.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.244.2.0/24".into(), "fc00:0:0:2::/64".into()]);
        assert_eq!(ix.listed(vec![n]).len(), 1);
        assert!(ix.skipped.is_empty());
    }
}
