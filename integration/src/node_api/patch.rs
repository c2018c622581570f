//! The three patch flavours the Kubernetes API accepts, applied to plain JSON:
//! JSON merge patch (RFC 7386), a strategic merge patch limited to the merge
//! keys a node agent meets, and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// The patch flavour, from the request's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
}

impl PatchKind {
    /// The patch flavour for a `Content-Type` header value, if supported.
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        match mime {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            _ => None,
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document has the wrong shape.
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch `test` operation failed.
    #[error("test operation failed at {0}")]
    TestFailed(String),
}

/// Applies `patch` of flavour `kind` to `target`.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    match kind {
        PatchKind::Merge => {
            merge_patch(target, patch);
            Ok(())
        }
        PatchKind::Strategic => {
            strategic_merge_patch(target, patch);
            Ok(())
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes,
/// everything else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// How the strategic merge patch treats a list, by its path from the root.
enum ListStrategy {
    /// A list of objects merged item by item on this key.
    Keyed(&'static str),
    /// A list of scalars merged as a set union.
    Union,
}

/// The lists of a Node (and of object metadata) that have a patch strategy;
/// every other list is replaced, as in a merge patch.
fn list_strategy(path: &str) -> Option<ListStrategy> {
    match path {
        "status.conditions" | "status.addresses" => Some(ListStrategy::Keyed("type")),
        "status.volumesAttached" => Some(ListStrategy::Keyed("name")),
        "metadata.ownerReferences" => Some(ListStrategy::Keyed("uid")),
        "metadata.finalizers" | "spec.podCIDRs" => Some(ListStrategy::Union),
        _ => None,
    }
}

/// Strategic merge patch, as the apiserver applies it to a Node: a merge
/// patch except that `status.conditions` and `status.addresses` are merged by
/// `type` (and a few more lists by their merge key, see [`list_strategy`]).
/// A list item `{"$patch": "delete", <key>: ...}` removes that item, a map
/// `{"$patch": "replace", ...}` replaces the map; every other `$` directive
/// (`$setElementOrder/...`, `$retainKeys`, ...) is ignored.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    strategic_at(target, patch, "");
}

fn strategic_at(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch_map) = patch else {
        *target = strip_directives(patch);
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match (value, list_strategy(&child_path)) {
            (Value::Null, _) => {
                target_map.remove(key);
            }
            (Value::Array(items), Some(strategy)) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = slot {
                    merge_list(existing, items, &strategy, &child_path);
                }
            }
            _ => strategic_at(
                target_map.entry(key.clone()).or_insert(Value::Null),
                value,
                &child_path,
            ),
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], strategy: &ListStrategy, path: &str) {
    match strategy {
        ListStrategy::Union => {
            for item in items {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
        }
        ListStrategy::Keyed(merge_key) => {
            for item in items {
                let Some(key) = item.get(*merge_key).filter(|k| !k.is_null()) else {
                    existing.push(strip_directives(item));
                    continue;
                };
                let position = existing.iter().position(|e| e.get(*merge_key) == Some(key));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        existing.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_at(&mut existing[i], item, &format!("{path}[]")),
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_at(&mut fresh, item, &format!("{path}[]"));
                        existing.push(fresh);
                    }
                }
            }
        }
    }
}

/// A copy of `value` without `$` directive keys and without `null` members.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
/// Atomic: on error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON patch must be an array".into()))?;
    let mut work = target.clone();
    for op in ops {
        let name = str_field(op, "op")?;
        let path = str_field(op, "path")?;
        match name {
            "add" => add(&mut work, path, value_field(op)?.clone())?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value_field(op)?.clone())?;
            }
            "move" => {
                let from = str_field(op, "from")?;
                let value = remove(&mut work, from)?;
                add(&mut work, path, value)?;
            }
            "copy" => {
                let from = str_field(op, "from")?;
                let value = work
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| PatchError::Invalid(format!("no value at {from}")))?;
                add(&mut work, path, value)?;
            }
            "test" => {
                if work.pointer(path) != Some(value_field(op)?) {
                    return Err(PatchError::TestFailed(path.to_string()));
                }
            }
            other => return Err(PatchError::Invalid(format!("unknown op {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}

fn str_field<'a>(op: &'a Value, field: &str) -> Result<&'a str, PatchError> {
    op.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::Invalid(format!("operation without string {field:?}")))
}

fn value_field(op: &Value) -> Result<&Value, PatchError> {
    op.get("value")
        .ok_or_else(|| PatchError::Invalid("operation without \"value\"".into()))
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), PatchError> {
    let cut = path
        .rfind('/')
        .ok_or_else(|| PatchError::Invalid(format!("bad JSON pointer {path:?}")))?;
    let token = path[cut + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..cut], token))
}

fn array_index(token: &str, len: usize, path: &str) -> Result<usize, PatchError> {
    token
        .parse::<usize>()
        .ok()
        .filter(|i| *i <= len)
        .ok_or_else(|| PatchError::Invalid(format!("bad array index in {path:?}")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if token == "-" {
                items.len()
            } else {
                array_index(&token, items.len(), path)?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(PatchError::Invalid(format!("no container at {path:?}"))),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, token) = split_pointer(path)?;
    let missing = || PatchError::Invalid(format!("no value at {path:?}"));
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(missing),
        Some(Value::Array(items)) => {
            let index = array_index(&token, items.len(), path)?;
            if index == items.len() {
                return Err(missing());
            }
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
#[path = "patch_tests.rs"]
mod tests;
