//! The last service of every route: forward to the backend's endpoints, streaming.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_core::{ClientAddr, Problem, Reason, TlsInfo, UpstreamLatency};

use crate::body::BoxBody;
use crate::routes::Backend;

/// The shared HTTP client to the upstreams (pooled).
pub type UpstreamClient = Client<HttpConnector, BoxBody>;

/// A new pooled client.
pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http1_writev(false)
        .build(connector)
}

/// Forwards a route's requests to its backend, round-robin over the ready endpoints.
#[derive(Clone)]
pub struct Proxy {
    client: UpstreamClient,
    backend: Arc<Backend>,
    /// The endpoints as URI authorities, made once.
    authorities: Arc<[http::uri::Authority]>,
    next: Arc<AtomicUsize>,
    /// How long the upstream has to send its response head.
    timeout: Duration,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("backend", &self.backend.name)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to `backend`.
    pub fn new(client: UpstreamClient, backend: Arc<Backend>, timeout: Duration) -> Self {
        let authorities = backend
            .endpoints
            .iter()
            .filter_map(|e| http::uri::Authority::try_from(e.to_string()).ok())
            .collect();
        Self {
            client,
            backend,
            authorities,
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        // Looking first is cheaper than removing: most messages carry none of them.
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

impl tower::Service<Request<BoxBody>> for Proxy {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let authorities = &self.authorities;
        let Some(authority) = (!authorities.is_empty())
            .then(|| authorities.get(self.next.fetch_add(1, Ordering::Relaxed) % authorities.len()))
            .flatten()
            .cloned()
        else {
            return Box::pin(async {
                Ok(Problem::new(Reason::UpstreamUnavailable).into_response())
            });
        };
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let host = req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = Some(
                req.uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            let Ok(uri) = Uri::from_parts(parts) else {
                return Ok(Problem::new(Reason::MalformedRequest).into_response());
            };
            *req.uri_mut() = uri;
            *req.version_mut() = http::Version::HTTP_11;
            let https = req.extensions().get::<TlsInfo>().is_some();
            let client_ip = req.extensions().get::<ClientAddr>().map(|c| c.ip());
            let headers = req.headers_mut();
            strip_hop_by_hop(headers);
            if let Some(ip) = client_ip {
                let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                    Some(prior) => format!("{prior}, {ip}"),
                    None => ip.to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if https { "https" } else { "http" }),
            );
            if let Some(host) = host {
                headers.insert(X_FORWARDED_HOST, host.clone());
                headers.insert(header::HOST, host);
            }
            let started = Instant::now();
            let response = match tokio::time::timeout(timeout, client.request(req)).await {
                Err(_) => return Ok(Problem::new(Reason::UpstreamTimeout).into_response()),
                Ok(Err(_)) => return Ok(Problem::new(Reason::UpstreamError).into_response()),
                Ok(Ok(r)) => r,
            };
            let latency = started.elapsed();
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(UpstreamLatency(latency));
            Ok(Response::from_parts(parts, BoxBody::new(body)))
        })
    }
}
