//! The Node API server's state, kept free of I/O: nodes and pods as JSON, the
//! global `resourceVersion` counter and the watch event history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::error::StoreError;
use super::patch::{self, PatchKind};

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted; the event carries its last state.
    Deleted,
}

impl EventType {
    /// The wire name: `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to a Node, as a watch reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventType,
    /// The global resourceVersion the change got.
    pub resource_version: u64,
    /// The Node after the change (before it, for a deletion, but with the
    /// deletion's resourceVersion).
    pub object: Value,
}

/// Which part of a Node a write may change, after the real apiserver: the
/// main resource ignores `status`, the `/status` subresource ignores `spec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/api/v1/nodes/{name}`: status changes are dropped.
    Main,
    /// `/api/v1/nodes/{name}/status`: spec changes are dropped.
    Status,
    /// The Rust API: everything applies.
    Whole,
}

/// What the server stamps on a newly created object.
#[derive(Clone, Debug)]
pub struct NewObjectMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.creationTimestamp`, RFC 3339.
    pub creation_timestamp: String,
}

/// A change's result: the stored object and the event it caused, if any (a
/// write that changes nothing neither bumps the resourceVersion nor emits).
pub type Outcome = (Value, Option<Arc<Event>>);

/// Nodes, pods, the resourceVersion counter and the event history.
#[derive(Debug)]
pub struct Store {
    resource_version: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<Arc<Event>>,
    history_capacity: usize,
    /// Every event with a resourceVersion above this one is in `history`.
    history_start: u64,
}

impl Store {
    /// An empty store at resourceVersion 1 keeping the last
    /// `history_capacity` events.
    pub fn new(history_capacity: usize) -> Store {
        Store {
            resource_version: 1,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            history: VecDeque::new(),
            history_capacity,
            history_start: 1,
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The Node called `name`.
    pub fn node(&self, name: &str) -> Option<&Value> {
        self.nodes.get(name)
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Value> {
        self.nodes.values()
    }

    /// The Pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    /// The Pods of `namespace` (of every namespace for `None`).
    pub fn pods<'a>(&'a self, namespace: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        self.pods
            .iter()
            .filter(move |((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, pod)| pod)
    }

    /// Creates a Node; `metadata.name` (or `generateName`) is required.
    pub fn create_node(
        &mut self,
        object: Value,
        meta: NewObjectMeta,
    ) -> Result<Outcome, StoreError> {
        let mut object = typed(object, "Node")?;
        let name = object_name(&mut object, &meta)?;
        if self.nodes.contains_key(&name) {
            return Err(StoreError::AlreadyExists {
                resource: "nodes",
                name,
            });
        }
        self.resource_version += 1;
        stamp(&mut object, &meta, self.resource_version);
        self.nodes.insert(name, object.clone());
        let event = self.record(EventType::Added, object.clone());
        Ok((object, Some(event)))
    }

    /// Replaces the Node `name` (a PUT), within what `subresource` may change.
    pub fn replace_node(
        &mut self,
        name: &str,
        object: Value,
        subresource: Subresource,
    ) -> Result<Outcome, StoreError> {
        self.update(name, object, subresource)
    }

    /// Patches the Node `name`, within what `subresource` may change.
    pub fn patch_node(
        &mut self,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        subresource: Subresource,
    ) -> Result<Outcome, StoreError> {
        let mut object = self.existing(name)?.clone();
        patch::apply(kind, &mut object, patch).map_err(|e| match e {
            patch::PatchError::TestFailed(_) => StoreError::Invalid(e.to_string()),
            patch::PatchError::Invalid(_) => StoreError::BadRequest(e.to_string()),
        })?;
        self.update(name, object, subresource)
    }

    /// Changes the Node `name` with `change`, spec and status alike.
    pub fn modify_node(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Outcome, StoreError> {
        let mut object = self.existing(name)?.clone();
        change(&mut object);
        self.update(name, object, Subresource::Whole)
    }

    /// Deletes the Node `name`, returning its last state.
    pub fn delete_node(&mut self, name: &str) -> Result<Outcome, StoreError> {
        let mut object = self
            .nodes
            .remove(name)
            .ok_or_else(|| not_found("nodes", name))?;
        self.resource_version += 1;
        set_resource_version(&mut object, self.resource_version);
        let event = self.record(EventType::Deleted, object.clone());
        Ok((object, Some(event)))
    }

    /// Creates or replaces a Pod; the namespace defaults to `default`.
    pub fn put_pod(&mut self, object: Value, meta: NewObjectMeta) -> Result<Value, StoreError> {
        let mut object = typed(object, "Pod")?;
        let name = object_name(&mut object, &meta)?;
        let namespace = match object.pointer("/metadata/namespace") {
            Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
            _ => "default".to_string(),
        };
        self.resource_version += 1;
        stamp(&mut object, &meta, self.resource_version);
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("namespace".into(), json!(namespace));
        }
        self.pods.insert((namespace, name), object.clone());
        Ok(object)
    }

    /// The events after `resource_version`, or [`StoreError::Expired`] when
    /// some of them are no longer in the history.
    pub fn events_since(&self, resource_version: u64) -> Result<Vec<Arc<Event>>, StoreError> {
        if resource_version < self.history_start {
            return Err(StoreError::Expired {
                requested: resource_version,
                oldest: self.history_start,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// Forgets the event history, like an etcd compaction: the counter moves
    /// on by one, so a watch from any earlier resourceVersion gets 410 Gone
    /// while a fresh list's resourceVersion can be watched from.
    pub fn compact(&mut self) {
        self.resource_version += 1;
        self.history.clear();
        self.history_start = self.resource_version;
    }

    fn existing(&self, name: &str) -> Result<&Value, StoreError> {
        self.nodes.get(name).ok_or_else(|| not_found("nodes", name))
    }

    fn update(
        &mut self,
        name: &str,
        new: Value,
        subresource: Subresource,
    ) -> Result<Outcome, StoreError> {
        let old = self.existing(name)?;
        let mut new = typed(new, "Node")?;
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        let Some(new_map) = new.as_object_mut() else {
            return Err(StoreError::BadRequest(
                "a Node must be a JSON object".into(),
            ));
        };
        let metadata = new_map.entry("metadata").or_insert_with(|| json!({}));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(StoreError::BadRequest(
                "metadata must be a JSON object".into(),
            ));
        };
        match metadata.get("name") {
            None => {
                metadata.insert("name".into(), json!(name));
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(StoreError::BadRequest(format!(
                    "the name of the object ({other}) does not match the name on the URL ({name})"
                )))
            }
        }
        match metadata.get("resourceVersion") {
            Some(Value::String(rv)) if !rv.is_empty() && Some(rv.as_str()) != old_rv.as_str() => {
                return Err(StoreError::Conflict(name.to_string()));
            }
            _ => {}
        }
        for key in ["uid", "creationTimestamp"] {
            match old.pointer(&format!("/metadata/{key}")) {
                Some(v) => metadata.insert(key.into(), v.clone()),
                None => metadata.remove(key),
            };
        }
        metadata.insert("resourceVersion".into(), old_rv);
        let kept = match subresource {
            Subresource::Main => Some("status"),
            Subresource::Status => Some("spec"),
            Subresource::Whole => None,
        };
        if let Some(kept) = kept {
            match old.get(kept) {
                Some(v) => new_map.insert(kept.into(), v.clone()),
                None => new_map.remove(kept),
            };
        }
        if new == *old {
            return Ok((new, None));
        }
        self.resource_version += 1;
        set_resource_version(&mut new, self.resource_version);
        self.nodes.insert(name.to_string(), new.clone());
        let event = self.record(EventType::Modified, new.clone());
        Ok((new, Some(event)))
    }

    fn record(&mut self, kind: EventType, object: Value) -> Arc<Event> {
        let event = Arc::new(Event {
            kind,
            resource_version: self.resource_version,
            object,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.history_start = dropped.resource_version;
            }
        }
        if self.history_capacity == 0 {
            self.history_start = self.resource_version;
        }
        event
    }
}

fn not_found(resource: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        resource,
        name: name.to_string(),
    }
}

/// Checks that `object` is a JSON object of `kind` (or has no kind) and sets
/// `apiVersion: v1` and `kind`.
fn typed(mut object: Value, kind: &str) -> Result<Value, StoreError> {
    let Some(map) = object.as_object_mut() else {
        return Err(StoreError::BadRequest(format!(
            "a {kind} must be a JSON object"
        )));
    };
    match map.get("kind") {
        None => {}
        Some(Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(StoreError::BadRequest(format!(
                "expected kind {kind}, got {other}"
            )))
        }
    }
    map.insert("apiVersion".into(), json!("v1"));
    map.insert("kind".into(), json!(kind));
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), Value::Object(Map::new()));
    }
    Ok(object)
}

/// The object's name, made from `generateName` when it has none.
fn object_name(object: &mut Value, meta: &NewObjectMeta) -> Result<String, StoreError> {
    let metadata = object.get_mut("metadata").and_then(Value::as_object_mut);
    let Some(metadata) = metadata else {
        return Err(StoreError::BadRequest(
            "metadata must be a JSON object".into(),
        ));
    };
    let name = match (metadata.get("name"), metadata.get("generateName")) {
        (Some(Value::String(n)), _) if !n.is_empty() => n.clone(),
        (_, Some(Value::String(prefix))) if !prefix.is_empty() => {
            let suffix: String = meta
                .uid
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(5)
                .collect();
            format!("{prefix}{suffix}")
        }
        _ => {
            return Err(StoreError::Invalid(
                "metadata.name: Required value: name or generateName is required".into(),
            ))
        }
    };
    metadata.insert("name".into(), json!(name));
    Ok(name)
}

fn stamp(object: &mut Value, meta: &NewObjectMeta, resource_version: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("uid".into(), json!(meta.uid));
        metadata.insert("creationTimestamp".into(), json!(meta.creation_timestamp));
    }
    set_resource_version(object, resource_version);
}

fn set_resource_version(object: &mut Value, resource_version: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert(
            "resourceVersion".into(),
            json!(resource_version.to_string()),
        );
    }
}
