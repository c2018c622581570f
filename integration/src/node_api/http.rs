//! The HTTP face of the Node API server: routes, request handlers, the
//! request log and fault injection middleware, and `Status` error bodies.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::{ApiError, StoreError};
use super::patch::PatchKind;
use super::selector::Selector;
use super::shared::Shared;
use super::store::Subresource;
use super::{watch, RecordedRequest};

/// The Kubernetes version `/version` claims.
const GIT_VERSION: &str = "v1.33.0";
/// The largest request body accepted.
const MAX_BODY: usize = 16 << 20;

type ApiResult = Result<Response, ApiError>;
type Shr = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;

/// The router for `shared`, with the request log and fault injection.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route(
            "/apis",
            get(|| async {
                Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
            }),
        )
        .route("/api/v1", get(api_resources))
        .route("/api/v1/nodes", get(list_or_watch_nodes).post(create_node))
        .route(
            "/api/v1/nodes/{name}",
            get(get_node)
                .patch(patch_node)
                .put(put_node)
                .delete(delete_node),
        )
        .route(
            "/api/v1/nodes/{name}/status",
            get(get_node).patch(patch_node_status).put(put_node_status),
        )
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .fallback(|| async {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// Logs the request, then applies the faults: blackhole, delay, 503.
async fn gate(State(shared): Shr, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            return ApiError::new(400, "BadRequest", format!("reading the body: {e}"))
                .into_response()
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string());
    tracing::debug!(method = %parts.method, %uri, "node api request");
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        uri,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    // Blackhole: hold the request until it is switched off (or the server stops).
    let mut blackhole = shared.blackhole.subscribe();
    let _ = blackhole.wait_for(|on| !*on).await;
    let delay = shared.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if shared.unavailable.load(Ordering::SeqCst) {
        return ApiError::new(
            503,
            "ServiceUnavailable",
            "the Node API server is unavailable (fault injection)",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn ok(code: StatusCode, value: Value) -> ApiResult {
    Ok((code, Json(value)).into_response())
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))
}

/// The label and field selectors of a query.
fn selectors(params: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let bad = |e: String| ApiError::new(400, "BadRequest", e);
    let labels =
        Selector::labels(params.get("labelSelector").map_or("", String::as_str)).map_err(bad)?;
    let fields =
        Selector::fields(params.get("fieldSelector").map_or("", String::as_str)).map_err(bad)?;
    Ok((labels, fields))
}

fn flag(params: &HashMap<String, String>, key: &str) -> bool {
    params.get(key).is_some_and(|v| v == "true" || v == "1")
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64"
    }))
}

async fn api_versions() -> Json<Value> {
    Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}))
}

async fn api_resources() -> Json<Value> {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "verbs": verbs, "shortNames": ["no"]},
            {"name": "nodes/status", "singularName": "", "namespaced": false, "kind": "Node", "verbs": ["get", "patch", "update"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["get", "list"], "shortNames": ["po"]}
        ]
    }))
}

async fn list_or_watch_nodes(State(shared): Shr, Query(params): Params) -> ApiResult {
    let (labels, fields) = selectors(&params)?;
    if flag(&params, "watch") {
        let request = watch::WatchRequest::from_params(&params, labels, fields)?;
        return Ok(watch::respond(shared, request));
    }
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let after = params.get("continue").filter(|c| !c.is_empty());
    let (resource_version, mut items) = shared.read(|store| {
        let items: Vec<Value> = store
            .nodes()
            .filter(|n| {
                after.is_none_or(|a| {
                    n.pointer("/metadata/name").and_then(Value::as_str) > Some(a.as_str())
                })
            })
            .filter(|n| labels.matches(n) && fields.matches(n))
            .cloned()
            .collect();
        (store.resource_version(), items)
    });
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let last = items
            .last()
            .and_then(|n| n.pointer("/metadata/name"))
            .cloned();
        metadata["continue"] = last.unwrap_or(Value::Null);
        metadata["remainingItemCount"] = json!(remaining);
    }
    ok(
        StatusCode::OK,
        json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items}),
    )
}

async fn create_node(State(shared): Shr, body: Bytes) -> ApiResult {
    let object = parse_body(&body)?;
    let created = shared.write(|store, meta| store.create_node(object, meta))?;
    ok(StatusCode::CREATED, created)
}

async fn get_node(State(shared): Shr, Path(name): Path<String>) -> ApiResult {
    let node = shared.read(|store| store.node(&name).cloned());
    let node = node.ok_or(StoreError::NotFound {
        resource: "nodes",
        name,
    })?;
    ok(StatusCode::OK, node)
}

async fn patch(
    shared: &Shared,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    sub: Subresource,
) -> ApiResult {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        )
    })?;
    let patch = parse_body(body)?;
    let node = shared.write(|store, _| store.patch_node(name, kind, &patch, sub))?;
    ok(StatusCode::OK, node)
}

async fn patch_node(
    State(shared): Shr,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    patch(&shared, &name, &headers, &body, Subresource::Main).await
}

async fn patch_node_status(
    State(shared): Shr,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    patch(&shared, &name, &headers, &body, Subresource::Status).await
}

async fn put_node(State(shared): Shr, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let object = parse_body(&body)?;
    ok(
        StatusCode::OK,
        shared.write(|store, _| store.replace_node(&name, object, Subresource::Main))?,
    )
}

async fn put_node_status(State(shared): Shr, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let object = parse_body(&body)?;
    ok(
        StatusCode::OK,
        shared.write(|store, _| store.replace_node(&name, object, Subresource::Status))?,
    )
}

async fn delete_node(State(shared): Shr, Path(name): Path<String>) -> ApiResult {
    ok(
        StatusCode::OK,
        shared.write(|store, _| store.delete_node(&name))?,
    )
}

async fn get_pod(State(shared): Shr, Path((namespace, name)): Path<(String, String)>) -> ApiResult {
    let pod = shared.read(|store| store.pod(&namespace, &name).cloned());
    ok(
        StatusCode::OK,
        pod.ok_or(StoreError::NotFound {
            resource: "pods",
            name,
        })?,
    )
}

async fn list_pods(
    State(shared): Shr,
    Path(namespace): Path<String>,
    Query(params): Params,
) -> ApiResult {
    pod_list(&shared, Some(&namespace), &params)
}

async fn list_all_pods(State(shared): Shr, Query(params): Params) -> ApiResult {
    pod_list(&shared, None, &params)
}

fn pod_list(
    shared: &Shared,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> ApiResult {
    if flag(params, "watch") {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "watching pods is not implemented",
        ));
    }
    let (labels, fields) = selectors(params)?;
    let (resource_version, items) = shared.read(|store| {
        let items: Vec<Value> = store
            .pods(namespace)
            .filter(|p| labels.matches(p) && fields.matches(p))
            .cloned()
            .collect();
        (store.resource_version(), items)
    });
    ok(
        StatusCode::OK,
        json!({"kind": "PodList", "apiVersion": "v1",
               "metadata": {"resourceVersion": resource_version.to_string()}, "items": items}),
    )
}
