//! State shared by the HTTP server and the synchronous [`super::NodeApi`]
//! handle: the store behind a mutex, the event fan-out to watches, the fault
//! switches and the request log.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::error::StoreError;
use super::store::{Event, NewObjectMeta, Outcome, Store};
use super::RecordedRequest;

/// What watch streams are told.
#[derive(Clone, Debug)]
pub enum Msg {
    /// A Node changed.
    Event(Arc<Event>),
    /// End every open watch stream now.
    DropWatches,
}

/// Everything the server and the handle share.
#[derive(Debug)]
pub struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Msg>,
    /// Answer every request with 503.
    pub unavailable: AtomicBool,
    /// Hold every request (and watch stream) until switched off.
    pub blackhole: watch::Sender<bool>,
    delay: Mutex<Duration>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// How often a watch asking for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Open watch streams.
    pub open_watches: AtomicUsize,
    uid_seed: RandomState,
    uid_counter: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Fresh state keeping `history` events, sending bookmarks every
    /// `bookmark_interval`.
    pub fn new(history: usize, bookmark_interval: Duration) -> Shared {
        let (events, _) = broadcast::channel(history.max(16));
        let (blackhole, _) = watch::channel(false);
        Shared {
            store: Mutex::new(Store::new(history)),
            events,
            unavailable: AtomicBool::new(false),
            blackhole,
            delay: Mutex::new(Duration::ZERO),
            requests: Mutex::new(Vec::new()),
            bookmark_interval,
            open_watches: AtomicUsize::new(0),
            uid_seed: RandomState::new(),
            uid_counter: AtomicU64::new(0),
        }
    }

    /// Reads the store.
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    /// Changes the store and, under the same lock, tells the watches.
    pub fn write(
        &self,
        f: impl FnOnce(&mut Store, NewObjectMeta) -> Result<Outcome, StoreError>,
    ) -> Result<Value, StoreError> {
        let meta = self.new_meta();
        let mut store = lock(&self.store);
        let (object, event) = f(&mut store, meta)?;
        if let Some(event) = event {
            // No receiver just means no open watch.
            let _ = self.events.send(Msg::Event(event));
        }
        Ok(object)
    }

    /// Subscribes to the watch fan-out and reads the store atomically with
    /// it, so that no event falls between the read and the subscription.
    pub fn subscribe<T>(&self, f: impl FnOnce(&Store) -> T) -> (broadcast::Receiver<Msg>, T) {
        let store = lock(&self.store);
        (self.events.subscribe(), f(&store))
    }

    /// Ends every open watch stream.
    pub fn drop_watches(&self) {
        let _ = self.events.send(Msg::DropWatches);
    }

    /// The delay added to every response.
    pub fn delay(&self) -> Duration {
        *lock(&self.delay)
    }

    /// Sets the delay added to every response.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Logs a request.
    pub fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    /// The request log.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    /// A uid and a creation timestamp for a new object.
    pub fn new_meta(&self) -> NewObjectMeta {
        let now = SystemTime::now();
        let count = self.uid_counter.fetch_add(1, Ordering::Relaxed);
        let mut words = [0u64; 2];
        for (i, word) in words.iter_mut().enumerate() {
            let mut hasher = self.uid_seed.build_hasher();
            hasher.write_u64(count);
            hasher.write_usize(i);
            hasher.write_u128(
                now.duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            *word = hasher.finish();
        }
        let hex = format!("{:016x}{:016x}", words[0], words[1]);
        let uid = format!(
            "{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        );
        NewObjectMeta {
            uid,
            creation_timestamp: rfc3339(now),
        }
    }
}

/// `time` as RFC 3339 in UTC, to the second (`2024-05-01T12:00:00Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The objects of a YAML or JSON text: one object, a `List`/`NodeList`/...
/// (its `items`), or a YAML stream of several documents; empty documents are
/// skipped.
pub fn parse_objects(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = Value::deserialize(document)?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                match map.get("items") {
                    Some(Value::Array(items)) => objects.extend(items.iter().cloned()),
                    Some(Value::Null) | None => {}
                    Some(_) => anyhow::bail!("a List's items must be an array"),
                }
            }
            Value::Object(_) => objects.push(value),
            _ => anyhow::bail!("expected a Kubernetes object, got {value}"),
        }
    }
    Ok(objects)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn uids_are_unique_uuids() {
        let shared = Shared::new(10, Duration::from_secs(1));
        let (a, b) = (shared.new_meta().uid, shared.new_meta().uid);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn parses_streams_lists_and_json() {
        let yaml = "kind: Node\nmetadata: {name: a}\n---\n---\nkind: NodeList\nitems:\n- metadata: {name: b}\n- metadata: {name: c}\n";
        let names: Vec<_> = parse_objects(yaml)
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let json = r#"{"kind":"List","apiVersion":"v1","items":[{"kind":"Node","metadata":{"name":"x"}}]}"#;
        assert_eq!(parse_objects(json).unwrap().len(), 1);
        assert!(parse_objects("- 1\n- 2\n").is_err());
    }
}
