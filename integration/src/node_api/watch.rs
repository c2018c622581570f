//! Node watch streams: newline-delimited JSON events over a chunked HTTP
//! body, with bookmarks, timeouts, `410 Expired` and fault injection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};

use super::error::{ApiError, StoreError};
use super::selector::Selector;
use super::shared::{Msg, Shared};
use super::store::{Event, EventType};

/// How long a watch lasts when the client gives no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// A watch request's parameters.
#[derive(Debug)]
pub struct WatchRequest {
    /// Start after this resourceVersion; `None` (no or `0` resourceVersion,
    /// or `sendInitialEvents=true`) starts with an `ADDED` event per Node.
    resource_version: Option<u64>,
    bookmarks: bool,
    send_initial_events: bool,
    timeout: Duration,
    labels: Selector,
    fields: Selector,
}

impl WatchRequest {
    /// Reads `resourceVersion`, `allowWatchBookmarks`, `sendInitialEvents`
    /// and `timeoutSeconds` from a query.
    pub fn from_params(
        params: &HashMap<String, String>,
        labels: Selector,
        fields: Selector,
    ) -> Result<WatchRequest, ApiError> {
        let flag = |key: &str| params.get(key).is_some_and(|v| v == "true" || v == "1");
        let send_initial_events = flag("sendInitialEvents");
        let resource_version = match params.get("resourceVersion").map(String::as_str) {
            _ if send_initial_events => None,
            None | Some("") | Some("0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("resourceVersion: Invalid value: {rv:?}"),
                )
            })?),
        };
        let timeout = match params.get("timeoutSeconds") {
            None => DEFAULT_TIMEOUT,
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("timeoutSeconds: Invalid value: {t:?}"),
                )
            })?),
        };
        Ok(WatchRequest {
            resource_version,
            bookmarks: flag("allowWatchBookmarks"),
            send_initial_events,
            timeout,
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Starts a watch stream for `request` and answers with its body.
pub fn respond(shared: Arc<Shared>, request: WatchRequest) -> Response {
    let (events, start) = shared.subscribe(|store| {
        let initial = match request.resource_version {
            None => Ok(store
                .nodes()
                .map(|node| {
                    Arc::new(Event {
                        kind: EventType::Added,
                        resource_version: object_rv(node),
                        object: node.clone(),
                    })
                })
                .collect()),
            Some(rv) => store.events_since(rv),
        };
        (store.resource_version(), initial)
    });
    let (lines, body) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run(shared, request, events, start, lines));
    let stream = futures::stream::unfold(body, |mut body| async move {
        body.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(line), body))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn object_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default()
}

/// Counts an open watch for as long as it lives.
struct OpenWatch<'a>(&'a Shared);

impl<'a> OpenWatch<'a> {
    fn new(shared: &'a Shared) -> OpenWatch<'a> {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": "Node", "apiVersion": "v1", "metadata": metadata}),
    )
}

/// Sends one line once the blackhole (if any) is lifted; false when the
/// client has gone.
async fn send(lines: &mpsc::Sender<Bytes>, shared: &Shared, bytes: Bytes) -> bool {
    let mut blackhole = shared.blackhole.subscribe();
    let _ = blackhole.wait_for(|on| !*on).await;
    lines.send(bytes).await.is_ok()
}

async fn run(
    shared: Arc<Shared>,
    request: WatchRequest,
    mut events: broadcast::Receiver<Msg>,
    (start_rv, initial): (u64, Result<Vec<Arc<Event>>, StoreError>),
    lines: mpsc::Sender<Bytes>,
) {
    let _open = OpenWatch::new(&shared);
    let initial = match initial {
        Ok(initial) => initial,
        Err(error) => {
            tracing::debug!(%error, "node watch from an expired resourceVersion");
            let _ = send(
                &lines,
                &shared,
                line("ERROR", &ApiError::from(error).status()),
            )
            .await;
            return;
        }
    };
    for event in initial.iter().filter(|e| request.matches(&e.object)) {
        if !send(&lines, &shared, line(event.kind.as_str(), &event.object)).await {
            return;
        }
    }
    if request.send_initial_events && !send(&lines, &shared, bookmark(start_rv, true)).await {
        return;
    }
    let mut last_rv = start_rv;
    let deadline = sleep(request.timeout);
    tokio::pin!(deadline);
    let period = shared.bookmark_interval.max(Duration::from_millis(10));
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut deadline => break,
            _ = lines.closed() => break,
            message = events.recv() => match message {
                Ok(Msg::Event(event)) => {
                    if event.resource_version <= last_rv {
                        continue;
                    }
                    last_rv = event.resource_version;
                    if request.matches(&event.object)
                        && !send(&lines, &shared, line(event.kind.as_str(), &event.object)).await
                    {
                        break;
                    }
                }
                Ok(Msg::DropWatches) => break,
                Err(error) => {
                    // Lagged: end the stream; the client resumes from its
                    // last resourceVersion, which the history still holds.
                    tracing::debug!(%error, "node watch ends");
                    break;
                }
            },
            _ = ticker.tick(), if request.bookmarks => {
                if !send(&lines, &shared, bookmark(last_rv, false)).await {
                    break;
                }
            }
        }
    }
}
