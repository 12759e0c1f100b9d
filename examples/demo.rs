//! The Portcullis demo: a small gateway in front of a mock OpenAI-compatible model server.
//!
//! It shows the pieces every Portcullis layer builds on: the client address resolved behind a
//! trusted proxy without believing forged `X-Forwarded-For` entries, and rejections as RFC 9457
//! problem responses with stable reason codes.
//!
//! ```sh
//! cargo run --example demo                      # serve on 127.0.0.1:8080 until Ctrl-C
//! cargo run --example demo -- --listen 127.0.0.1:9000
//! cargo run --example demo -- --self-check      # serve on a free port, send the demo requests, exit
//! ```
//!
//! Then, in another terminal:
//!
//! ```sh
//! curl -s localhost:8080/echo -H 'x-forwarded-for: 6.6.6.6, 203.0.113.7'
//! curl -s localhost:8080/v1/chat/completions -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
//! curl -si localhost:8080/admin
//! ```
//!
//! The demo trusts `127.0.0.0/8` as its load balancer, so the right-most forwarded address
//! (`203.0.113.7`) is the client and the forged left-most one (`6.6.6.6`) is ignored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::core::{ClientAddr, Problem, Reason, TrustedProxies};
use portcullis_test_util::FakeUpstream;
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, hyper::Error>;

const CLIENT_IP_HEADER: HeaderName = HeaderName::from_static("x-portcullis-client-ip");

struct Gateway {
    proxies: TrustedProxies,
    upstream: SocketAddr,
    client: Client<HttpConnector, Incoming>,
}

impl Gateway {
    async fn handle(&self, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
        // The accept loop's job: resolve who the client is, once, for every layer further in.
        let client = self.proxies.resolve(peer, req.headers());
        req.extensions_mut().insert(client);

        let path = req.uri().path();
        if !(path.starts_with("/v1/") || path == "/echo" || path.starts_with("/echo/")) {
            return problem(Problem::new(Reason::NoRoute));
        }
        match self.forward(req).await {
            Ok(response) => response,
            Err(_) => problem(Problem::new(Reason::UpstreamError)),
        }
    }

    async fn forward(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let client = *req
            .extensions()
            .get::<ClientAddr>()
            .ok_or("no client address")?;
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(self.upstream.to_string())
            .path_and_query(path)
            .build()?;
        req.headers_mut().remove(HOST);
        req.headers_mut().insert(
            CLIENT_IP_HEADER,
            HeaderValue::from_str(&client.ip().to_string())?,
        );
        let response = self.client.request(req).await?;
        Ok(response.map(BodyExt::boxed))
    }
}

fn problem(problem: Problem) -> Response<Body> {
    problem
        .into_response::<Full<Bytes>>()
        .map(|body| body.map_err(|never: Infallible| match never {}).boxed())
}

async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, Infallible>(gateway.handle(peer, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends the demo requests to the gateway at `addr` and checks the answers.
async fn self_check(addr: SocketAddr) -> Result<(), Error> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let url = |path: &str| format!("http://{addr}{path}");

    let req = Request::get(url("/echo?q=1"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .body(Full::default())?;
    let response = client.request(req).await?;
    let status = response.status();
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    let seen = echo
        .pointer("/headers/x-portcullis-client-ip/0")
        .cloned()
        .unwrap_or_default();
    println!("GET /echo with a forged X-Forwarded-For -> {status}, upstream saw client {seen}");
    check(
        status == StatusCode::OK && seen == "203.0.113.7",
        "client address",
    )?;

    let req = Request::post(url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"demo","messages":[{"role":"user","content":"hello there"}]}"#,
        )))?;
    let response = client.request(req).await?;
    let status = response.status();
    let chat: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    let usage = chat.get("usage").cloned().unwrap_or_default();
    println!("POST /v1/chat/completions -> {status}, usage {usage}");
    check(
        status == StatusCode::OK && usage.get("prompt_tokens") == Some(&2.into()),
        "chat",
    )?;

    let req = Request::get(url("/admin")).body(Full::default())?;
    let response = client.request(req).await?;
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let body = response.into_body().collect().await?.to_bytes();
    println!("GET /admin -> {status} {}", String::from_utf8_lossy(&body));
    check(
        status == StatusCode::NOT_FOUND
            && content_type
                .as_ref()
                .is_some_and(|v| v == "application/problem+json"),
        "problem response",
    )?;
    println!("self-check passed");
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("self-check failed: {what}").into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let self_checking = args.iter().any(|a| a == "--self-check");
    let listen = match args.iter().position(|a| a == "--listen") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--listen needs an address")?
            .parse()?,
        None if self_checking => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };

    let upstream = FakeUpstream::start().await?;
    let gateway = Arc::new(Gateway {
        proxies: TrustedProxies::new(["127.0.0.0/8".parse()?]),
        upstream: upstream.addr(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "portcullis demo gateway on http://{addr} -> mock model server on http://{}",
        upstream.addr()
    );
    tokio::spawn(serve(listener, gateway));

    if self_checking {
        return self_check(addr).await;
    }
    println!("try: curl -s http://{addr}/echo -H 'x-forwarded-for: 6.6.6.6, 203.0.113.7'");
    println!(
        "     curl -s http://{addr}/v1/chat/completions -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
    );
    println!("     curl -si http://{addr}/admin");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
