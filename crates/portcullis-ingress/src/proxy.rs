//! The last service of every route: forward to the backend's endpoints, streaming.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use portcullis_core::{ClientAddr, Problem, Reason, TlsInfo, UpstreamLatency};

use crate::body::BoxBody;
use crate::routes::Backend;
use crate::upstream::{Endpoint, UpstreamError, Upstreams, list_items};

/// Forwards a route's requests to its backend, round-robin over the ready endpoints.
#[derive(Clone)]
pub struct Proxy {
    backend: Arc<Backend>,
    /// The endpoints, with their connection pools.
    endpoints: Arc<[Arc<Endpoint>]>,
    next: Arc<AtomicUsize>,
    /// How long the upstream has to send its response head.
    timeout: Duration,
}

/// When a request reached the gateway (a request extension the server sets).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// How long a request's layers may take before it waits for the others to write together.
const GATHER_AFTER: Duration = Duration::from_micros(5);

/// Marks the response to a request whose layers took long enough that its write to the
/// upstream waited for the others' (a response extension): the server then writes its
/// response with theirs too.
#[derive(Debug, Clone, Copy)]
pub struct Gathered;

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
    /// A proxy to `backend`, on the endpoints' pools in `upstreams`.
    pub fn new(upstreams: &Upstreams, backend: Arc<Backend>, timeout: Duration) -> Self {
        let endpoints = backend
            .endpoints
            .iter()
            .map(|addr| upstreams.endpoint(*addr))
            .collect();
        Self {
            backend,
            endpoints,
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

/// Writes an address as `X-Forwarded-For` carries it. IPv4 by hand: `Display` goes through the
/// formatting machinery, which cost more than the rest of the header's handling.
fn write_ip(ip: std::net::IpAddr, out: &mut Vec<u8>) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names: most messages carry none of them.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = list_items(headers, &header::CONNECTION)
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
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
        let endpoints = &self.endpoints;
        let Some(endpoint) = (!endpoints.is_empty())
            .then(|| endpoints.get(self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()))
            .flatten()
            .cloned()
        else {
            return Box::pin(async {
                Ok(Problem::new(Reason::UpstreamUnavailable).into_response())
            });
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let host = req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let https = req.extensions().get::<TlsInfo>().is_some();
            let client_ip = req.extensions().get::<ClientAddr>().map(|c| c.ip());
            let headers = req.headers_mut();
            strip_hop_by_hop(headers);
            if let Some(ip) = client_ip {
                let prior = headers.get(&X_FORWARDED_FOR);
                let mut xff = Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + 39);
                if let Some(prior) = prior {
                    xff.extend_from_slice(prior.as_bytes());
                    xff.extend_from_slice(b", ");
                }
                write_ip(ip, &mut xff);
                if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if https { "https" } else { "http" }),
            );
            if let Some(host) = host {
                headers.insert(X_FORWARDED_HOST, host.clone());
                if !headers.contains_key(header::HOST) {
                    headers.insert(header::HOST, host);
                }
            }
            let started = Instant::now();
            // A request that took its layers a while (the WAF's inspection, an uncached
            // signature) waits for the other requests ready now before it writes, so the
            // upstream is woken once for the lot, not once per request: on a busy core the
            // wake-ups of an idle upstream cost more than the wait. A cheap request goes at
            // once: waiting costs it more than the wake-up. (Its response is marked, and the
            // server gathers the responses' writes the same way.)
            let gathered = req
                .extensions()
                .get::<Arrived>()
                .is_some_and(|Arrived(at)| started.saturating_duration_since(*at) >= GATHER_AFTER);
            if gathered {
                tokio::task::yield_now().await;
            }
            let response = match tokio::time::timeout(timeout, endpoint.send(req)).await {
                Err(_) => return Ok(Problem::new(Reason::UpstreamTimeout).into_response()),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %endpoint.addr(), error = %e, "upstream exchange failed");
                    let reason = match e {
                        UpstreamError::ConnectTimeout => Reason::UpstreamTimeout,
                        _ => Reason::UpstreamError,
                    };
                    return Ok(Problem::new(reason).into_response());
                }
                Ok(Ok(r)) => r,
            };
            let latency = started.elapsed();
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(UpstreamLatency(latency));
            if gathered {
                parts.extensions.insert(Gathered);
            }
            Ok(Response::from_parts(parts, BoxBody::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_slow_request_is_marked_gathered_and_a_fast_one_is_not() {
        let upstream = portcullis_test_util::upstream::FakeUpstream::start()
            .await
            .unwrap();
        let proxy = Proxy::new(
            &crate::upstream::Upstreams::default(),
            Arc::new(crate::routes::Backend {
                name: "test".into(),
                endpoints: vec![upstream.addr()],
            }),
            Duration::from_secs(5),
        );
        let request = |arrived: Option<Instant>| {
            let mut req = Request::get("/").body(BoxBody::empty()).unwrap();
            if let Some(at) = arrived {
                req.extensions_mut().insert(Arrived(at));
            }
            req
        };
        // Layers that took a second: its write waited for the others', and so will its
        // response's.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        let slow = proxy
            .clone()
            .oneshot(request(Some(long_ago)))
            .await
            .unwrap();
        assert_eq!(slow.status(), http::StatusCode::OK);
        assert!(slow.extensions().get::<Gathered>().is_some());
        // No arrival time (no layers timed): written at once, not marked.
        let fast = proxy.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(fast.status(), http::StatusCode::OK);
        assert!(fast.extensions().get::<Gathered>().is_none());
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "1.10.100.200",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(ip, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-stays", "1"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-stays"));
        // With none of them, nothing changes.
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
