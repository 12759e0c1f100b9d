//! A fake Kubernetes API server: list and watch of the kinds the ingress reads, with resource
//! versions, bookmarks and `410 Gone` for expired versions, over 127.0.0.1, with a kubeconfig
//! so the code under test loads its client the ordinary way.
//!
//! A test fixture: a misused fake (an object of a kind it does not serve, or that is not a
//! JSON object) is the test's bug, and panics.
#![allow(clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};

use crate::Error;

/// The kinds served: (apiVersion, kind, the collection's path).
const KINDS: &[(&str, &str, &str)] = &[
    (
        "networking.k8s.io/v1",
        "Ingress",
        "/apis/networking.k8s.io/v1/ingresses",
    ),
    (
        "networking.k8s.io/v1",
        "IngressClass",
        "/apis/networking.k8s.io/v1/ingressclasses",
    ),
    (
        "portcullis.dev/v1alpha1",
        "PortcullisPolicy",
        "/apis/portcullis.dev/v1alpha1/portcullispolicies",
    ),
    ("v1", "Service", "/api/v1/services"),
    ("v1", "Secret", "/api/v1/secrets"),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
];

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object), oldest first.
    events: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Versions at or below this are gone: watching from them answers 410 (once expired, even
    /// the version current at the time).
    compacted: u64,
    /// Bumped by [`FakeKube::expire`]: open watches end.
    epoch: u64,
    collections: HashMap<&'static str, Collection>,
    lists: HashMap<String, u64>,
    watches: HashMap<String, u64>,
    /// Events created (`events.k8s.io/v1`), oldest first; a patch (a repeat) replaces the
    /// event of the same name.
    recorded: Vec<Value>,
}

struct State {
    store: Mutex<Store>,
    changed: broadcast::Sender<()>,
}

/// A running fake API server on `127.0.0.1:0`. Stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

impl FakeKube {
    /// Starts the server.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound.
    pub async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = broadcast::channel(1024);
        let state = Arc::new(State {
            store: Mutex::new(Store::default()),
            changed,
        });
        let accept_state = Arc::clone(&state);
        let shutdown = crate::upstream::serve_loopback(listener, move |req| {
            let state = Arc::clone(&accept_state);
            async move { handle(state, req).await }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server to `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
                self.addr
            ),
        )
    }

    /// Creates or replaces an object (its `apiVersion` and `kind` say which collection).
    ///
    /// # Panics
    ///
    /// On a kind this server does not serve, or an object without a name (a test's mistake).
    pub fn apply(&self, mut object: Value) {
        let (_, _, path) = kind_of(&object);
        let Ok(mut store) = self.state.store.lock() else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{rv}"));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let key = object_key(&object);
        let coll = store.collections.entry(path).or_default();
        let kind = if coll.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        coll.objects.insert(key, object.clone());
        coll.events.push((rv, kind, object));
        drop(store);
        let _ = self.state.changed.send(());
    }

    /// Deletes an object.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let (_, _, path) = kind_of(&probe);
        let key = object_key(&probe);
        let Ok(mut store) = self.state.store.lock() else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        let coll = store.collections.entry(path).or_default();
        if let Some(mut object) = coll.objects.remove(&key) {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            coll.events.push((rv, "DELETED", object));
        }
        drop(store);
        let _ = self.state.changed.send(());
    }

    /// Forgets every event so far and ends the open watches: a client that watches again from
    /// its last version gets `410 Gone` and must list again.
    pub fn expire(&self) {
        if let Ok(mut store) = self.state.store.lock() {
            store.compacted = store.rv;
            store.epoch += 1;
            for coll in store.collections.values_mut() {
                coll.events.clear();
            }
        }
        let _ = self.state.changed.send(());
    }

    /// An object as the server holds it now (`namespace/name` for namespaced kinds).
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let (_, _, path) = kind_of(&probe);
        let key = object_key(&probe);
        let store = self.state.store.lock().ok()?;
        store.collections.get(path)?.objects.get(&key).cloned()
    }

    /// The Events clients have created (`events.k8s.io/v1`, any namespace), oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .store
            .lock()
            .map_or_else(|_| Vec::new(), |s| s.recorded.clone())
    }

    /// How many lists and watches each collection path has served.
    pub fn requests(&self, path: &str) -> (u64, u64) {
        self.state.store.lock().map_or((0, 0), |s| {
            (
                s.lists.get(path).copied().unwrap_or(0),
                s.watches.get(path).copied().unwrap_or(0),
            )
        })
    }
}

fn kind_of(object: &Value) -> (&'static str, &'static str, &'static str) {
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    KINDS
        .iter()
        .find(|(a, k, _)| *a == api && *k == kind)
        .copied()
        .unwrap_or_else(|| panic!("the fake API server does not serve {api} {kind}"))
}

fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Records an Event a client creates (POST) or repeats (PATCH).
async fn record_event(state: &State, req: Request<Incoming>) -> Response<Body> {
    let patch = req.method() == Method::PATCH;
    let Ok(body) = req.into_body().collect().await else {
        return json_response(StatusCode::BAD_REQUEST, &json!({}));
    };
    let Ok(event) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return json_response(StatusCode::BAD_REQUEST, &json!({}));
    };
    let Ok(mut store) = state.store.lock() else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
    };
    let name = event["metadata"]["name"].clone();
    if patch
        && let Some(old) = store
            .recorded
            .iter_mut()
            .find(|e| e["metadata"]["name"] == name)
    {
        *old = event.clone();
        return json_response(StatusCode::OK, &event);
    }
    store.recorded.push(event.clone());
    json_response(StatusCode::CREATED, &event)
}

/// A merge patch of an object's `status` subresource: the status replaced, a new version, a
/// `MODIFIED` event, as an API server does.
async fn patch_status(
    state: &State,
    req: Request<Incoming>,
    coll_path: &'static str,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let Ok(body) = req.into_body().collect().await else {
        return json_response(StatusCode::BAD_REQUEST, &json!({}));
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return json_response(StatusCode::BAD_REQUEST, &json!({}));
    };
    // .../namespaces/{ns}/{plural}/{name}/status
    let parts: Vec<&str> = path.split('/').collect();
    let (Some(ns), Some(name)) = (
        parts
            .iter()
            .position(|p| *p == "namespaces")
            .and_then(|i| parts.get(i + 1)),
        parts.len().checked_sub(2).and_then(|i| parts.get(i)),
    ) else {
        return json_response(StatusCode::NOT_FOUND, &json!({}));
    };
    let key = format!("{ns}/{name}");
    let Ok(mut store) = state.store.lock() else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
    };
    store.rv += 1;
    let rv = store.rv;
    let Some(coll) = store.collections.get_mut(coll_path) else {
        return json_response(StatusCode::NOT_FOUND, &json!({}));
    };
    let Some(object) = coll.objects.get_mut(&key) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    object["status"] = patch["status"].clone();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let object = object.clone();
    coll.events.push((rv, "MODIFIED", object.clone()));
    drop(store);
    let _ = state.changed.send(());
    json_response(StatusCode::OK, &object)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/apis/events.k8s.io/v1/namespaces/")
        && (req.method() == Method::POST || req.method() == Method::PATCH)
    {
        return record_event(&state, req).await;
    }
    if req.method() == Method::PATCH
        && path.starts_with("/apis/portcullis.dev/v1alpha1/namespaces/")
        && path.ends_with("/status")
    {
        return patch_status(
            &state,
            req,
            "/apis/portcullis.dev/v1alpha1/portcullispolicies",
        )
        .await;
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Some(&(api, kind, coll_path)) = KINDS.iter().find(|(_, _, p)| *p == path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let Ok(mut store) = state.store.lock() else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
    };
    if !watching {
        *store.lists.entry(path).or_default() += 1;
        let items: Vec<Value> = store
            .collections
            .get(coll_path)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default();
        let list = json!({
            "apiVersion": api,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        });
        return json_response(StatusCode::OK, &list);
    }
    *store.watches.entry(path).or_default() += 1;
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(64);
    let response = {
        let mut r = Response::new(body.boxed_unsync());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    if store.compacted > 0 && from <= store.compacted {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": format!("too old resource version: {from} ({})", store.compacted)}});
        drop(store);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from(format!("{gone}\n"))).await;
        });
        return response;
    }
    let epoch = store.epoch;
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    drop(store);
    let mut changed = state.changed.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut sent = from;
        loop {
            // What happened since the last event sent.
            let (lines, rv, ended) = {
                let Ok(store) = state.store.lock() else {
                    return;
                };
                let lines: Vec<String> = store
                    .collections
                    .get(coll_path)
                    .map(|c| {
                        c.events
                            .iter()
                            .filter(|(rv, _, _)| *rv > sent)
                            .map(|(_, t, o)| json!({"type": t, "object": o}).to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                (lines, store.rv, store.epoch != epoch)
            };
            if ended {
                return;
            }
            for line in lines {
                if tx.send_data(Bytes::from(line + "\n")).await.is_err() {
                    return;
                }
            }
            sent = rv;
            tokio::select! {
                _ = changed.recv() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if bookmarks {
                        let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": sent.to_string()}}});
                        if tx.send_data(Bytes::from(format!("{mark}\n"))).await.is_err() {
                            return;
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    response
}

/// Manifests for a backend on loopback: the `portcullis` IngressClass, Service `service` (port
/// 80, named `http`) in `namespace`, and its EndpointSlice with one ready endpoint,
/// `127.0.0.1:port`. Multi-document YAML, ending with a separator for the caller's documents.
pub fn loopback_backend_yaml(namespace: &str, service: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: portcullis}}
spec: {{controller: portcullis.dev/ingress-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: {service}, namespace: {namespace}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
---
"#
    )
}
