//! The server: listeners, the route table swapped atomically on change, per-route stacks,
//! the admin port, graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_audit::{Audit, AuditConfig, AuditLayer};
use portcullis_core::{
    Problem, Reason, Rejection, RouteInfo, TokenUsage, TrustedProxies, UpstreamLatency, WafVerdict,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::body::{BoxBody, BoxError};
use crate::conn::{Activity, Watched};
use crate::manifests::Snapshot;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::routes::{ObjectError, RouteTable};
use crate::stack::{Layers, RouteService, build};
use crate::tls::TlsPlan;
use crate::upstream::Upstreams;
use portcullis_ztls::{ConnectionInfo, ServerConfigs};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the objects come from.
#[derive(Clone)]
pub enum Source {
    /// A manifests directory, checked for changes every `Options::poll` (the embedded
    /// default when there is no cluster).
    Manifests(PathBuf),
    /// The cluster, through this client.
    Kubernetes(kube::Client),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifests(dir) => f.debug_tuple("Manifests").field(dir).finish(),
            Self::Kubernetes(_) => f.write_str("Kubernetes"),
        }
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the objects come from.
    pub source: Source,
    /// The plain-HTTP traffic listener.
    pub listen: Option<SocketAddr>,
    /// The TLS traffic listener (certificates from the Ingresses' `spec.tls` Secrets).
    pub tls_listen: Option<SocketAddr>,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<SocketAddr>,
    /// How long an upstream has to send its response head.
    pub upstream_timeout: Duration,
    /// How long a client has to send a request head (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// How long a request may take until its response head (reading a body the WAF holds
    /// included); then 408.
    pub request_timeout: Duration,
    /// How long a connection may stay open with no bytes moving and no request waiting.
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain: Duration,
    /// How often the manifests are checked for changes.
    pub poll: Duration,
    /// Proxies in front of the ingress whose forwarded headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// The audit log, if any.
    pub audit: Option<AuditConfig>,
}

/// A route's built stack and what it was built from.
struct Built {
    service: RouteService,
    /// The policy and backend it was built from: unchanged, the stack (and its state:
    /// counters, caches) is kept across rebuilds.
    fingerprint: String,
    info: Option<RouteInfo>,
    /// The route's name (its Ingress) and response counters.
    name: Arc<str>,
    counters: Arc<crate::metrics::RouteCounters>,
    /// The policy layers the stack uses.
    layers: Layers,
}

struct Compiled {
    table: RouteTable,
    /// By route key, to keep stacks across rebuilds.
    stacks: HashMap<String, Arc<Built>>,
    /// By route id, for requests.
    by_id: Vec<Option<Arc<Built>>>,
}

/// The ingress: its route table and stacks, swapped atomically when the objects change.
pub struct Gateway {
    state: RwLock<Arc<Compiled>>,
    upstreams: Upstreams,
    upstream_timeout: Duration,
    /// The counters.
    pub metrics: Metrics,
    audit: Option<Audit>,
    ready: AtomicBool,
    /// The TLS plan in force and its built configurations.
    tls: RwLock<Option<(TlsPlan, Arc<ServerConfigs>)>>,
    /// The policy layers in use, reused while their section is unchanged.
    layers: std::sync::Mutex<Layers>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway with no routes yet.
    pub fn new(upstream_timeout: Duration, audit: Option<Audit>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(Arc::new(Compiled {
                table: RouteTable::default(),
                stacks: HashMap::new(),
                by_id: Vec::new(),
            })),
            upstreams: Upstreams::default(),
            upstream_timeout,
            metrics: Metrics::default(),
            audit,
            ready: AtomicBool::new(false),
            tls: RwLock::new(None),
            layers: std::sync::Mutex::new(Layers::default()),
        })
    }

    /// Compiles `snapshot` and swaps it in. Returns the problems found: invalid objects are
    /// reported and skipped; a route whose policy no longer builds keeps its previous stack
    /// (or, new, fails closed with 503 `gateway.route_misconfigured`).
    pub fn apply(&self, snapshot: &Snapshot) -> Vec<ObjectError> {
        let table = RouteTable::compile(snapshot);
        let mut problems: Vec<ObjectError> = table.errors.clone();
        let previous = self.current();
        let mut stacks = HashMap::new();
        // The layers built so far, this rebuild's added as they are made.
        let mut cache = self.layers.lock().map(|l| l.clone()).unwrap_or_default();
        for (host, route) in table.routes() {
            let key = route.key(host);
            // The policy with its Secret references resolved: a changed Secret rebuilds.
            let resolved = route.policy.as_ref().map(|(_, spec)| {
                crate::secrets::resolve(spec, &route.namespace, &snapshot.secrets)
            });
            let fingerprint = format!(
                "{:?}|{}|{:?}",
                route
                    .policy
                    .as_ref()
                    .map(|(n, _)| n)
                    .zip(resolved.as_ref().map(|r| {
                        r.as_ref()
                            .map(|spec| serde_json::to_string(spec).unwrap_or_default())
                    })),
                route.backend.name,
                route.backend.endpoints
            );
            if let Some(old) = previous
                .stacks
                .get(&key)
                .filter(|b| b.fingerprint == fingerprint)
            {
                stacks.insert(key, old.clone());
                continue;
            }
            let info = RouteInfo::new(route.ingress.rsplit('/').next().unwrap_or_default())
                .and_then(|r| r.with_namespace(route.namespace.clone()))
                .and_then(|r| r.with_ingress(route.ingress.clone()))
                .ok();
            let proxy = Proxy::new(
                &self.upstreams,
                route.backend.clone(),
                self.upstream_timeout,
            );
            let policy_name = route.policy.as_ref().map_or("", |(n, _)| n.as_str());
            let stack = match &resolved {
                None => build(None, proxy, &mut cache),
                Some(Ok(spec)) => build(Some((policy_name, spec)), proxy, &mut cache),
                Some(Err(message)) => Err(message.clone()),
            };
            let built = match stack {
                Ok((service, layers)) => Built {
                    service,
                    fingerprint,
                    info,
                    name: route.ingress.as_str().into(),
                    counters: self.metrics.route(&route.ingress),
                    layers,
                },
                Err(message) => {
                    let policy = route.policy.as_ref().map_or("", |(n, _)| n.as_str());
                    let object = format!("PortcullisPolicy {policy}");
                    if let Some(old) = previous.stacks.get(&key) {
                        problems.push(ObjectError {
                            object,
                            message: format!(
                                "{message}; Ingress {} keeps its previous configuration",
                                route.ingress
                            ),
                        });
                        stacks.insert(key, old.clone());
                        continue;
                    }
                    problems.push(ObjectError {
                        object,
                        message: format!(
                            "{message}; Ingress {} fails closed (503) until it is fixed",
                            route.ingress
                        ),
                    });
                    Built {
                        service: RouteService::new(tower::service_fn(
                            |_: Request<BoxBody>| async {
                                Ok::<_, Infallible>(
                                    Problem::new(Reason::RouteMisconfigured).into_response(),
                                )
                            },
                        )),
                        fingerprint: String::new(),
                        info,
                        name: route.ingress.as_str().into(),
                        counters: self.metrics.route(&route.ingress),
                        layers: Layers::default(),
                    }
                }
            };
            stacks.insert(key, Arc::new(built));
        }
        // Keep the layers the routes use; those of removed or changed sections go.
        let mut kept = Layers::default();
        for built in stacks.values() {
            kept.extend(&built.layers);
        }
        if let Ok(mut layers) = self.layers.lock() {
            *layers = kept;
        }
        let previous_tls = self
            .tls
            .read()
            .ok()
            .and_then(|t| t.as_ref().map(|(p, _)| p.clone()));
        let (plan, tls_errors) = crate::tls::plan(snapshot, previous_tls.as_ref());
        problems.extend(tls_errors);
        self.apply_tls(plan, &mut problems);
        // One report per policy and Ingress, however many of its paths it covers.
        problems.sort();
        problems.dedup();
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .invalid_objects
            .store(problems.len() as u64, Ordering::Relaxed);
        let mut by_id = vec![None; table.len()];
        for (host, route) in table.routes() {
            if let Some(slot) = by_id.get_mut(route.id) {
                *slot = stacks.get(&route.key(host)).cloned();
            }
        }
        if let Ok(mut state) = self.state.write() {
            *state = Arc::new(Compiled {
                table,
                stacks,
                by_id,
            });
        }
        self.ready.store(true, Ordering::Relaxed);
        problems
    }

    /// Installs a new TLS plan when it differs from the one in force. A plan that does not
    /// build leaves the previous certificates serving.
    fn apply_tls(&self, plan: Option<TlsPlan>, problems: &mut Vec<ObjectError>) {
        let unchanged = self
            .tls
            .read()
            .map(|t| t.as_ref().map(|(p, _)| p) == plan.as_ref())
            .unwrap_or(false);
        if unchanged {
            return;
        }
        let next = match plan {
            None => None,
            Some(plan) => match plan.build() {
                Ok(configs) => Some((plan, Arc::new(configs))),
                Err(e) => {
                    problems.push(ObjectError {
                        object: "TLS".into(),
                        message: format!("{e}; the previous certificates stay in force"),
                    });
                    return;
                }
            },
        };
        if let Ok(mut tls) = self.tls.write() {
            *tls = next;
        }
    }

    /// The TLS configuration for a connection to `sni`: `None` while no certificate is
    /// configured.
    pub fn tls_config(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        let tls = self.tls.read().ok()?;
        tls.as_ref().map(|(_, configs)| configs.for_sni(sni))
    }

    fn current(&self) -> Arc<Compiled> {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Routes and serves one request.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<BoxBody>, Infallible>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let state = self.current();
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let matched = state.table.find(host, req.uri().path()).and_then(|m| {
            state
                .by_id
                .get(m.route.id)
                .and_then(Option::as_ref)
                .cloned()
        });
        let Some(built) = matched else {
            self.metrics.request("", 404);
            self.metrics.rejection("gateway", Reason::NoRoute.code());
            return Ok(Problem::new(Reason::NoRoute).into_response());
        };
        let mut req = req.map(BoxBody::new);
        if let Some(info) = &built.info {
            req.extensions_mut().insert(info.clone());
        }
        let Ok(mut response) = built.service.clone().oneshot(req).await;
        if let Some(info) = &built.info
            && response.extensions().get::<RouteInfo>().is_none()
        {
            // Kept when an inner layer refined it (the model, from the body).
            response.extensions_mut().insert(info.clone());
        }
        let ext = response.extensions();
        built.counters.count(response.status().as_u16());
        if let Some(r) = ext.get::<Rejection>() {
            self.metrics
                .rejection(r.layer().as_str(), r.reason().code());
        }
        if let Some(v) = ext.get::<WafVerdict>() {
            self.metrics.waf_rules(v.matched_rules());
        }
        if let Some(t) = ext.get::<TokenUsage>() {
            self.metrics.tokens(&built.name, t.total());
        }
        if let Some(u) = ext.get::<UpstreamLatency>() {
            self.metrics.upstream(u.0);
        }
        Ok(response)
    }

    /// The admin endpoints.
    pub fn admin(&self, path: &str) -> Response<BoxBody> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(BoxBody::from(Bytes::from(body)));
            *r.status_mut() = status;
            r
        };
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            "/metrics" => {
                let mut r = text(
                    StatusCode::OK,
                    self.metrics.render(self.audit.as_ref().map(Audit::stats)),
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => Problem::new(Reason::NoRoute).into_response(),
        }
    }
}

/// A fingerprint of the manifests directory: names, sizes and modification times.
fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

/// Loads the manifests and applies them, printing what is wrong.
fn reload(gateway: &Gateway, dir: &std::path::Path) {
    match Snapshot::load_dir(dir) {
        Ok((snapshot, errors)) => {
            for e in &errors {
                eprintln!("portcullis: {e}");
            }
            for problem in gateway.apply(&snapshot) {
                eprintln!("portcullis: {problem}");
            }
        }
        Err(e) => eprintln!("portcullis: {}: {e}", dir.display()),
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The plain-HTTP traffic address.
    pub addr: Option<SocketAddr>,
    /// The TLS traffic address.
    pub tls_addr: Option<SocketAddr>,
    /// The admin address.
    pub admin: Option<SocketAddr>,
    /// The gateway.
    pub gateway: Arc<Gateway>,
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the drain deadline), flushes
    /// the audit log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Starts the server on `options`.
///
/// # Errors
///
/// A listener cannot be bound, or the audit log cannot be started.
pub async fn start(options: Options) -> Result<Running, BoxError> {
    let (audit, audit_task) = match options.audit.clone() {
        Some(config) => {
            let (a, t) = Audit::start(config)?;
            (Some(a), Some(t))
        }
        None => (None, None),
    };
    let gateway = Gateway::new(options.upstream_timeout, audit.clone());
    if let Source::Manifests(dir) = &options.source {
        reload(&gateway, dir);
    }
    let bind = |a: Option<SocketAddr>| async move {
        match a {
            Some(a) => TcpListener::bind(a).await.map(Some),
            None => Ok(None),
        }
    };
    let listener = bind(options.listen).await?;
    let tls_listener = bind(options.tls_listen).await?;
    let addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let tls_addr = tls_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let admin_listener = match options.admin {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let admin = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    if let Some(l) = admin_listener {
        tokio::spawn(serve_admin(l, gateway.clone(), stop.subscribe()));
    }
    if let Source::Kubernetes(client) = &options.source {
        tokio::spawn(crate::kube_source::run(
            client.clone(),
            gateway.clone(),
            stop.subscribe(),
        ));
    }
    if let Source::Manifests(dir) = &options.source {
        // Watch the manifests.
        let (gateway, dir, every, mut stopped) =
            (gateway.clone(), dir.clone(), options.poll, stop.subscribe());
        tokio::spawn(async move {
            let mut seen = fingerprint(&dir);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let now = fingerprint(&dir);
                if now != seen {
                    seen = now;
                    reload(&gateway, &dir);
                }
            }
        });
    }
    let done = {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            .writev(false);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_LIST);
        let serving = Arc::new(Serving {
            gateway: gateway.clone(),
            proxies: options.trusted_proxies.clone(),
            audit,
            builder,
            idle: options.idle_timeout,
            handshake: options.header_timeout,
            request_timeout: options.request_timeout,
        });
        let mut tasks = Vec::new();
        for (listener, tls) in [(listener, false), (tls_listener, true)] {
            if let Some(listener) = listener {
                tasks.push(tokio::spawn(accept(
                    listener,
                    tls,
                    serving.clone(),
                    options.drain,
                    stop.subscribe(),
                )));
            }
        }
        tokio::spawn(async move {
            let _ = stopped.changed().await;
            // Each listener stops accepting and drains its connections.
            for task in tasks {
                let _ = task.await;
            }
            drop(serving);
            if let Some(task) = audit_task {
                task.shutdown().await;
            }
        })
    };
    Ok(Running {
        addr,
        tls_addr,
        admin,
        gateway,
        stop,
        done,
    })
}

/// The HTTP/2 header list's limit. HTTP/1 heads are held to hyper's default of 100 headers,
/// parsed into a buffer on the stack (a set limit makes it fill a heap buffer of that size for
/// every request), and to its read buffer, 400 KiB.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// What every connection is served with.
struct Serving {
    gateway: Arc<Gateway>,
    proxies: TrustedProxies,
    audit: Option<Audit>,
    builder: auto::Builder<TokioExecutor>,
    idle: Duration,
    handshake: Duration,
    request_timeout: Duration,
}

/// Accepts connections on `listener` until stopped.
async fn accept(
    listener: TcpListener,
    tls: bool,
    serving: Arc<Serving>,
    drain: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => break,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (serving, watcher) = (serving.clone(), graceful.watcher());
        tokio::spawn(async move {
            if !tls {
                serving.serve(stream, peer, None, watcher).await;
                return;
            }
            match handshake(&serving, stream).await {
                Some((stream, info)) => serving.serve(stream, peer, Some(info), watcher).await,
                None => {
                    serving
                        .gateway
                        .metrics
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// The TLS handshake with the configuration in force for the client's SNI, within the
/// handshake timeout. `None`: no certificate is configured, or the handshake failed
/// (including a client certificate that does not verify).
async fn handshake(
    serving: &Serving,
    stream: tokio::net::TcpStream,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ConnectionInfo,
)> {
    let done = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await
                .ok()?;
        let config = serving
            .gateway
            .tls_config(start.client_hello().server_name())?;
        let stream = start.into_stream(config).await.ok()?;
        let info = ConnectionInfo::from_connection(stream.get_ref().1).ok()?;
        Some((stream, info))
    };
    tokio::time::timeout(serving.handshake, done)
        .await
        .ok()
        .flatten()
}

type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Serving {
    /// Serves one connection until it closes, goes idle, or the drain ends.
    async fn serve<I>(
        &self,
        io: I,
        peer: SocketAddr,
        info: Option<ConnectionInfo>,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let io = TokioIo::new(Watched::new(io, activity.clone()));
        let entry = Entry {
            gateway: self.gateway.clone(),
            proxies: self.proxies.clone(),
            peer,
            info,
            activity: activity.clone(),
            request_timeout: self.request_timeout,
        };
        let conn: ConnFuture = match &self.audit {
            Some(a) => {
                let svc = tower::ServiceBuilder::new()
                    .layer(AuditLayer::new(a.clone()))
                    .service(entry);
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(io, TowerToHyperService::new(svc))
                    .into_owned();
                Box::pin(async move {
                    let _ = watcher.watch(conn).await;
                })
            }
            None => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(io, TowerToHyperService::new(entry))
                    .into_owned();
                Box::pin(async move {
                    let _ = watcher.watch(conn).await;
                })
            }
        };
        tokio::select! {
            () = conn => {}
            () = activity.idle(self.idle) => {
                self.gateway.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A connection's entry: resolves the client address, adds what the TLS handshake
/// established, then routes within the request timeout.
#[derive(Clone)]
struct Entry {
    gateway: Arc<Gateway>,
    proxies: TrustedProxies,
    peer: SocketAddr,
    info: Option<ConnectionInfo>,
    activity: Arc<Activity>,
    request_timeout: Duration,
}

impl<B> tower::Service<Request<B>> for Entry
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let client = self.proxies.resolve(self.peer, req.headers());
        req.extensions_mut().insert(client);
        req.extensions_mut()
            .insert(crate::proxy::Arrived(std::time::Instant::now()));
        if let Some(info) = &self.info {
            info.insert_into(req.extensions_mut());
        }
        let in_flight = self.activity.request();
        let (gateway, limit) = (self.gateway.clone(), self.request_timeout);
        Box::pin(async move {
            let handled = tokio::time::timeout(limit, gateway.clone().handle(req)).await;
            // A slow request's response waits for the others ready now, so they are written
            // together and the client side is woken once for the lot (as the upstream is for
            // their requests, see `proxy::Gathered`).
            if let Ok(Ok(response)) = &handled
                && response
                    .extensions()
                    .get::<crate::proxy::Gathered>()
                    .is_some()
            {
                tokio::task::yield_now().await;
            }
            drop(in_flight);
            match handled {
                Ok(response) => response,
                Err(_) => {
                    gateway.metrics.request("", 408);
                    gateway
                        .metrics
                        .rejection("gateway", Reason::RequestTimeout.code());
                    Ok(Problem::new(Reason::RequestTimeout).into_response())
                }
            }
        })
    }
}

async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = gateway.admin(req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
