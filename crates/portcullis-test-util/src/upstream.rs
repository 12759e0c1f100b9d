//! A fake upstream server: echo, server-sent events, status codes, and an OpenAI-compatible
//! chat-completions mock with `usage` token counts.
//!
//! | route | behaviour |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI-style completion. `stream: true` answers with SSE chunks, and with a final usage chunk when `stream_options.include_usage` is true. The reply is the request header `x-mock-reply`, or a fixed sentence; `max_tokens` cuts it (finish reason `length`). |
//! | `GET /sse?events=N&interval_ms=M` | `N` events (default 3, at most 1000) `M` ms apart (default 5, at most 1000). |
//! | `/status/CODE` | answers `CODE` with a small JSON body. |
//! | anything else | echoes method, path, query, headers and body as JSON. |
//!
//! Token counts are deterministic so tests can assert them: a message's tokens are its
//! whitespace-separated words, the prompt's are the sum over all messages, and the
//! completion's are the reply's words.
//!
//! The same handler is available in-process as [`respond`], for tests driven with
//! `ServiceExt::oneshot` that need no socket.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::Error;

/// The largest request body the fake upstream reads; larger bodies get 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The reply of the chat mock unless the request sets `x-mock-reply`.
pub const DEFAULT_REPLY: &str = "Hello from the mock model.";
/// How many requests [`FakeUpstream::requests`] remembers.
pub const RECORDED: usize = 256;

/// The response body type of the fake upstream.
pub type UpstreamBody = BoxBody<Bytes, Infallible>;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl RecordedRequest {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path and query.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

#[derive(Debug, Default)]
struct State {
    hits: AtomicU64,
    recorded: Mutex<VecDeque<RecordedRequest>>,
}

/// A running fake upstream on `127.0.0.1:0`. Stops when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FakeUpstream {
    /// Starts the server (HTTP/1.1 and cleartext HTTP/2) on an ephemeral loopback port.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound.
    pub async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept_state = Arc::clone(&state);
        let shutdown = serve_loopback(listener, move |req| {
            let state = Arc::clone(&accept_state);
            async move { handle(&state, req).await }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// How many requests have reached the upstream.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The most recent requests (up to [`RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state
            .recorded
            .lock()
            .ok()
            .and_then(|r| r.back().cloned())
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle<B>(state: &State, req: Request<B>) -> Response<UpstreamBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    state.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "body too large or broken"}),
            );
        }
    };
    if let Ok(mut recorded) = state.recorded.lock() {
        if recorded.len() == RECORDED {
            recorded.pop_front();
        }
        recorded.push_back(RecordedRequest {
            method: parts.method.clone(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    route(Request::from_parts(parts, body))
}

/// Answers one request the way the fake upstream would, in-process.
pub async fn respond<B>(req: Request<B>) -> Response<UpstreamBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    handle(&State::default(), req).await
}

fn route(req: Request<Bytes>) -> Response<UpstreamBody> {
    let path = req.uri().path();
    if path == "/v1/chat/completions" {
        if req.method() != Method::POST {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": {"message": "use POST", "type": "invalid_request_error"}}),
            );
        }
        return chat_completions(&req);
    }
    if path == "/sse" {
        return sse(req.uri().query().unwrap_or(""));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return json_response(status, &json!({"status": status.as_u16()}));
    }
    echo(&req)
}

fn echo(req: &Request<Bytes>) -> Response<UpstreamBody> {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "headers": headers,
            "body": String::from_utf8_lossy(req.body()),
            "body_len": req.body().len(),
        }),
    )
}

fn words(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// The text of a message's `content`: a string, or the `text` parts of a content array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn chat_completions(req: &Request<Bytes>) -> Response<UpstreamBody> {
    let invalid = |message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": message, "type": "invalid_request_error"}}),
        )
    };
    let Ok(body) = serde_json::from_slice::<Value>(req.body()) else {
        return invalid("the body is not valid JSON");
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return invalid("`messages` is required");
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned();
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| words(&content_text(m.get("content").unwrap_or(&Value::Null))))
        .sum();
    let reply = req
        .headers()
        .get("x-mock-reply")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REPLY);
    let mut reply_words: Vec<&str> = reply.split_whitespace().collect();
    let mut finish = "stop";
    if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if reply_words.len() > max {
            reply_words.truncate(max);
            finish = "length";
        }
    }
    let completion_tokens = u64::try_from(reply_words.len()).unwrap_or(u64::MAX);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    });
    let id = "chatcmpl-mock";
    let created = crate::jwt::now_unix();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply_words.join(" ")},
                    "finish_reason": finish,
                }],
                "usage": usage,
            }),
        );
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut events = Vec::with_capacity(reply_words.len() + 3);
    let last = reply_words.len().saturating_sub(1);
    for (i, word) in reply_words.iter().enumerate() {
        let text = if i == last {
            (*word).to_owned()
        } else {
            format!("{word} ")
        };
        let delta = if i == 0 {
            json!({"role": "assistant", "content": text})
        } else {
            json!({"content": text})
        };
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
        }));
    }
    events.push(json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
    }));
    if include_usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        }));
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, Duration::ZERO)
}

fn query_param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn sse(query: &str) -> Response<UpstreamBody> {
    let events = query_param(query, "events").unwrap_or(3).min(1000);
    let interval = Duration::from_millis(query_param(query, "interval_ms").unwrap_or(5).min(1000));
    let frames = (0..events)
        .map(|n| Bytes::from(format!("id: {n}\nevent: tick\ndata: {{\"n\":{n}}}\n\n")))
        .collect();
    sse_response(frames, interval)
}

/// Streams `frames` one by one, `interval` apart, so a proxy in front is seen to stream.
fn sse_response(frames: Vec<Bytes>, interval: Duration) -> Response<UpstreamBody> {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Frame::data(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<UpstreamBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;

/// Serves `handler` on `listener` (HTTP/1.1 and cleartext HTTP/2) until the returned sender
/// fires or is dropped.
pub(crate) fn serve_loopback<H, F, B>(listener: TcpListener, handler: H) -> oneshot::Sender<()>
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (shutdown, mut stop) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                // A client hanging up mid-request is not the server's problem.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    shutdown
}
