//! Cross-crate checks of the foundation: the facade exposes core, and the test utilities work
//! together with it the way later layers' tests will use them.

#![allow(
    clippy::unwrap_used,
    reason = "a test helper failing should fail the test loudly"
)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::core::{AddrSource, ClientAddr, Problem, Reason, Rejection, TrustedProxies};
use portcullis_test_util::FakeUpstream;

/// A toy layer: rejects clients outside 203.0.113.0/24 before the upstream is called,
/// forwards the rest. Real layers follow this shape.
async fn gate(
    proxies: &TrustedProxies,
    upstream: &FakeUpstream,
    peer: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Response<Bytes> {
    let client = proxies.resolve(peer, req.headers());
    let allowed: portcullis::core::IpCidr = "203.0.113.0/24".parse().unwrap();
    if !allowed.contains(client.ip()) {
        return Problem::new(Reason::Forbidden).into_response();
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = upstream.url(parts.uri.path()).parse().unwrap();
    parts.extensions.insert(client);
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = http
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn rejection_never_reaches_the_upstream_and_carries_a_problem() {
    let upstream = FakeUpstream::start().await.unwrap();
    let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
    let peer: SocketAddr = "10.0.0.2:5555".parse().unwrap();

    // The client forges an allowed address on the left; the proxy appended the real one.
    let forged = Request::get("/v1/models")
        .header("x-forwarded-for", "203.0.113.5, 198.51.100.9")
        .body(Full::default())
        .unwrap();
    let response = gate(&proxies, &upstream, peer, forged).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let rejection = response.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.reason(), Reason::Forbidden);
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["code"], "authn.forbidden");
    // The problem does not echo the offending addresses.
    let text = String::from_utf8_lossy(response.body());
    assert!(!text.contains("198.51.100.9") && !text.contains("203.0.113.5"));
    assert_eq!(upstream.hits(), 0, "the upstream must not be called");

    // The real client in the allowed range gets through.
    let genuine = Request::get("/v1/models")
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.5")
        .body(Full::default())
        .unwrap();
    let response = gate(&proxies, &upstream, peer, genuine).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(upstream.last_request().unwrap().uri(), "/v1/models");
}

#[test]
fn facade_reexports_core() {
    let client = ClientAddr::from_peer("192.0.2.1:1".parse().unwrap());
    assert_eq!(client.source(), AddrSource::Peer);
    assert_eq!(
        portcullis::core::Reason::ALL.len(),
        portcullis_core_reason_count()
    );
}

fn portcullis_core_reason_count() -> usize {
    // Every reason renders a problem with its own code.
    portcullis::core::Reason::ALL
        .iter()
        .map(|r| Problem::new(*r).into_response::<Bytes>())
        .filter(|resp| resp.extensions().get::<Rejection>().is_some())
        .count()
}

#[test]
fn problems_doc_lists_every_reason_with_its_status() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/problems.md")).unwrap();
    let rows: Vec<(String, u16)> = doc
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let status = cells.get(2)?.parse().ok()?;
            Some((code.to_owned(), status))
        })
        .collect();
    let want: Vec<(String, u16)> = Reason::ALL
        .iter()
        .map(|r| (r.code().to_owned(), r.status().as_u16()))
        .collect();
    assert_eq!(rows, want);
}
