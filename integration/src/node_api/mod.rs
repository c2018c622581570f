//! An embedded Kubernetes Node API server for weft's lab and fault-injection
//! tests: a real HTTP/1.1 server that a kube-rs client talks to over plain
//! HTTP, serving what a flannel-like node agent needs of the apiserver.
//!
//! Served (see the module's HTTP routes):
//! - `GET /api/v1/nodes`: LIST with `labelSelector`, `fieldSelector` (any
//!   dotted path, `=`, `==`, `!=`), `limit`/`continue` (by name, over the
//!   current state); `resourceVersion` is accepted and ignored (lists are
//!   always current).
//! - `GET /api/v1/nodes?watch=true`: WATCH from `resourceVersion` (none or
//!   `0`: an `ADDED` event per Node first), with bookmarks every
//!   [`NodeApiOptions::bookmark_interval`], `sendInitialEvents=true`,
//!   `timeoutSeconds`, and an `ERROR` event with a `410 Expired` `Status`
//!   when the resourceVersion is older than the event history.
//! - `GET`, `PATCH` (merge, strategic merge, JSON patch), `PUT`, `DELETE`
//!   `/api/v1/nodes/{name}` and `GET`/`PATCH`/`PUT` `.../status` (the main
//!   resource drops status changes, `/status` drops spec changes).
//! - `POST /api/v1/nodes`; `GET /api/v1/namespaces/{ns}/pods/{name}` and pod
//!   lists; `/version`, `/api`, `/api/v1`, `/apis`.
//! - Anything else: a 404 `Status`.
//!
//! Not served: authentication, other resources, server-side apply
//! (`application/apply-patch+yaml` gets 415), finalizers and graceful
//! deletion (a DELETE removes at once), `dryRun`, protobuf, consistent
//! snapshots across `continue` pages, and watch selectors turning `MODIFIED`
//! into `ADDED`/`DELETED` when an object enters or leaves the selection.

mod error;
mod http;
mod patch;
mod selector;
mod shared;
mod store;
#[cfg(test)]
mod store_tests;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use shared::Shared;
use store::Subresource;

pub use patch::PatchKind;

/// One request as the server received it, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// Path and query, e.g. `/api/v1/nodes?watch=true&resourceVersion=5`.
    pub uri: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body (lossily decoded as UTF-8).
    pub body: String,
}

impl RecordedRequest {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }

    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
    }
}

/// Tunables of a [`NodeApi`].
#[derive(Clone, Debug)]
pub struct NodeApiOptions {
    /// How many events the watch history keeps (1000 by default); a watch
    /// from before them gets `410 Expired`.
    pub history: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK
    /// (1 s by default; the real apiserver sends one about every minute).
    pub bookmark_interval: Duration,
}

impl Default for NodeApiOptions {
    fn default() -> Self {
        NodeApiOptions {
            history: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running Node API server. Its methods are synchronous and may be called
/// from any thread; it stops on [`NodeApi::stop`] or when dropped.
#[derive(Debug)]
pub struct NodeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NodeApi {
    /// Starts a server on `bind` (port 0: any free port) with default
    /// options; returns once it listens.
    ///
    /// The socket is bound on the calling thread, so a caller that has
    /// entered a network namespace gets a server listening in it; the server
    /// then runs its own tokio runtime on a thread of its own.
    pub fn start(bind: SocketAddr) -> anyhow::Result<NodeApi> {
        NodeApi::start_with(bind, NodeApiOptions::default())
    }

    /// [`NodeApi::start`] with `options`.
    pub fn start_with(bind: SocketAddr, options: NodeApiOptions) -> anyhow::Result<NodeApi> {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("binding the Node API server to {bind}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options.history, options.bookmark_interval));
        let (shutdown, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("node-api-{}", addr.port()))
            .spawn(move || serve(listener, server_shared, stopped, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("starting the Node API server")),
            Err(_) => anyhow::bail!("the Node API server thread died while starting"),
        }
        tracing::info!(%addr, "Node API server listening");
        Ok(NodeApi {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose only cluster is this server (plain HTTP, no
    /// authentication), context and user named `weft-lab`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "weft-lab", "cluster": {"server": self.url()}}],
            "users": [{"name": "weft-lab", "user": {}}],
            "contexts": [{"name": "weft-lab", "context": {"cluster": "weft-lab", "user": "weft-lab"}}],
            "current-context": "weft-lab",
            "preferences": {},
        });
        std::fs::write(path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Creates a Node (a `serde_json::Value`, a `k8s_openapi` `Node`, ...);
    /// fails if one of that name exists.
    pub fn create_node(&self, node: impl serde::Serialize) -> anyhow::Result<()> {
        let node = serde_json::to_value(node)?;
        self.shared
            .write(|store, meta| store.create_node(node, meta))?;
        Ok(())
    }

    /// Changes the Node `name` (spec and status alike) with `change`; like an
    /// update through the API, it bumps the resourceVersion and emits
    /// MODIFIED unless nothing changed. Returns the stored Node.
    pub fn update_node(
        &self,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        Ok(self
            .shared
            .write(|store, _| store.modify_node(name, change))?)
    }

    /// Loads the objects of a YAML or JSON file (one object, a `List` or
    /// `NodeList`, or a YAML stream of several documents): Nodes are created,
    /// or replaced when they exist, and Pods are stored as by
    /// [`NodeApi::add_pod`]. Returns how many objects were loaded.
    pub fn load_nodes(&self, path: &Path) -> anyhow::Result<usize> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let objects =
            shared::parse_objects(&text).with_context(|| format!("parsing {}", path.display()))?;
        let count = objects.len();
        for object in objects {
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("Node")
                .to_string();
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string);
            match kind.as_str() {
                "Pod" => {
                    self.shared
                        .write(|store, meta| Ok((store.put_pod(object, meta)?, None)))?;
                }
                "Node" => {
                    self.shared.write(|store, meta| {
                        match name.as_deref().filter(|n| store.node(n).is_some()) {
                            Some(name) => store.replace_node(name, object, Subresource::Whole),
                            None => store.create_node(object, meta),
                        }
                    })?;
                }
                other => anyhow::bail!("{}: cannot load a {other}", path.display()),
            }
        }
        Ok(count)
    }

    /// Deletes the Node `name`.
    pub fn delete_node(&self, name: &str) -> anyhow::Result<()> {
        self.shared.write(|store, _| store.delete_node(name))?;
        Ok(())
    }

    /// The Node `name`, as stored.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.read(|store| store.node(name).cloned())
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> Vec<Value> {
        self.shared.read(|store| store.nodes().cloned().collect())
    }

    /// Registers (or replaces) a running Pod `namespace/name` scheduled on
    /// `node_name`, as weft finds its node from `POD_NAME`/`POD_NAMESPACE`.
    pub fn add_pod(&self, namespace: &str, name: &str, node_name: &str) {
        let pod = json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node_name, "containers": [{"name": "weft", "image": "weft"}]},
            "status": {"phase": "Running"},
        });
        if let Err(error) = self
            .shared
            .write(|store, meta| Ok((store.put_pod(pod, meta)?, None)))
        {
            tracing::warn!(%error, "adding pod {namespace}/{name}");
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|store| store.resource_version())
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Fault: while on, every request (connections are still accepted) is
    /// answered `503 ServiceUnavailable` with a `Status` body, and switching
    /// it on ends every open watch stream.
    ///
    /// Note that kube-rs clients retry 503s by default (up to 15 times,
    /// backing off exponentially from 5 ms), so through a default client an
    /// outage looks like slow requests, and a request made during a long
    /// outage may only complete a while after it ends; a client built with
    /// `Config::default_retry = false` sees the 503 at once.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.unavailable.store(on, Ordering::SeqCst);
        if on {
            self.shared.drop_watches();
        }
    }

    /// Fault, like a network partition: while on, connections are accepted
    /// but no request is answered and open watch streams deliver nothing;
    /// held requests and streams go on when it is switched off (unless the
    /// client gave up). Clients notice only through their own timeouts.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// Fault: ends every open watch stream now (clients resume from their
    /// last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Fault: delays every response by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// Fault: forgets the event history, like an etcd compaction. The
    /// resourceVersion moves on by one, so a watch from any resourceVersion
    /// known before gets `410 Expired` (open watches go on), while a list
    /// made afterwards can be watched from.
    pub fn compact(&self) {
        self.shared
            .write(|store, _| {
                store.compact();
                Ok((Value::Null, None))
            })
            .ok();
    }

    /// Stops the server: open connections and watches are cut.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the Node API server thread panicked");
            }
        }
    }
}

impl Drop for NodeApi {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The server thread: a current-thread runtime serving until `stopped`.
fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::select! {
            result = axum::serve(listener, http::router(shared)) => {
                if let Err(error) = result {
                    tracing::warn!(%error, "the Node API server failed");
                }
            }
            _ = stopped => {}
        }
    });
    // Dropping the runtime cancels every connection and watch task.
    drop(runtime);
}
