use super::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client.request(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn chat(upstream: &FakeUpstream, body: Value) -> Request<Full<Bytes>> {
    Request::post(upstream.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The JSON payloads of an SSE body's `data:` lines, and whether it ended with `[DONE]`.
fn sse_payloads(body: &[u8]) -> (Vec<Value>, bool) {
    let text = std::str::from_utf8(body).unwrap();
    let mut out = Vec::new();
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        if data == "[DONE]" {
            done = true;
        } else {
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    (out, done)
}

#[tokio::test]
async fn echoes_requests_and_records_them() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = Request::put(upstream.url("/some/path?a=1&b=2"))
        .header("x-test", "one")
        .header("x-test", "two")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/some/path");
    assert_eq!(json["query"], "a=1&b=2");
    assert_eq!(json["headers"]["x-test"], json!(["one", "two"]));
    assert_eq!(json["body"], "hello");
    assert_eq!(json["body_len"], 5);
    assert_eq!(upstream.hits(), 1);
    let last = upstream.last_request().unwrap();
    assert_eq!(last.method(), Method::PUT);
    assert_eq!(last.uri(), "/some/path?a=1&b=2");
    assert_eq!(last.body().as_ref(), b"hello");
    assert_eq!(last.headers().get_all("x-test").iter().count(), 2);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn chat_completion_reports_deterministic_usage() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = chat(
        &upstream,
        json!({
            "model": "llama-test",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Say hello to me"}]},
            ],
        }),
    );
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "llama-test");
    assert_eq!(json["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    // 3 + 4 prompt words; 5 reply words.
    assert_eq!(json["usage"]["prompt_tokens"], 7);
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(json["usage"]["total_tokens"], 12);
}

#[tokio::test]
async fn chat_reply_can_be_chosen_and_cut_by_max_tokens() {
    let upstream = FakeUpstream::start().await.unwrap();
    let mut req = chat(
        &upstream,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    );
    req.headers_mut().insert(
        "x-mock-reply",
        HeaderValue::from_static("the secret is AKIAABCDEFGHIJKLMNOP indeed"),
    );
    let (_, _, body) = send(&client(), req).await;
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], "the secret is");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["usage"]["completion_tokens"], 3);
    assert_eq!(json["model"], "mock-model");
}

#[tokio::test]
async fn chat_streams_sse_with_a_final_usage_chunk() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = chat(
        &upstream,
        json!({
            "model": "m",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three"}],
        }),
    );
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let (events, done) = sse_payloads(&body);
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let finish = &events[events.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = chat(
        &upstream,
        json!({"stream": true, "messages": [{"role": "user", "content": "x"}]}),
    );
    let (_, _, body) = send(&client(), req).await;
    let (events, done) = sse_payloads(&body);
    assert!(done);
    assert!(events.iter().all(|e| e.get("usage").is_none()));
}

#[tokio::test]
async fn chat_rejects_bad_requests() {
    let upstream = FakeUpstream::start().await.unwrap();
    let c = client();
    let req = Request::post(upstream.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    let (status, _, _) = send(&c, chat(&upstream, json!({"model": "m"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let req = Request::get(upstream.url("/v1/chat/completions"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn sse_endpoint_streams_events() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = Request::get(upstream.url("/sse?events=4&interval_ms=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    // One frame per event: the body really is streamed, not buffered.
    assert_eq!(frames.len(), 4);
    assert_eq!(&frames[3][..], b"id: 3\nevent: tick\ndata: {\"n\":3}\n\n");
}

#[tokio::test]
async fn status_route_answers_the_asked_status() {
    let upstream = FakeUpstream::start().await.unwrap();
    let c = client();
    for (path, want) in [
        ("/status/401", StatusCode::UNAUTHORIZED),
        ("/status/503", StatusCode::SERVICE_UNAVAILABLE),
        ("/status/nope", StatusCode::BAD_REQUEST),
    ] {
        let req = Request::get(upstream.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&c, req).await.0, want, "{path}");
    }
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let upstream = FakeUpstream::start().await.unwrap();
    let req = Request::post(upstream.url("/echo"))
        .body(Full::new(Bytes::from(vec![b'a'; MAX_BODY + 1])))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn speaks_cleartext_http2() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h2: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(upstream.url("/h2"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn respond_works_in_process() {
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(
            json!({"messages": [{"role": "user", "content": "a b"}]}).to_string(),
        )))
        .unwrap();
    let response = respond(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["usage"]["prompt_tokens"], 2);
}
