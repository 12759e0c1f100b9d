//! Token budgets against the test-util OpenAI mock, in-process.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis_core::{AuthMethod, Principal, Reason, Rejection, TokenUsage, UsageSource};
use portcullis_test_util::upstream::{DEFAULT_REPLY, respond};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::*;

#[derive(Debug, Default)]
struct FixedClock(AtomicU64);

impl portcullis_core::Clock for FixedClock {
    fn now_unix(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// 2025-11-26T14:10:45Z: 15 s before the minute ends.
const NOW: u64 = 1_764_166_245;

fn layer(config: Value) -> TokenBudgetLayer {
    let config: TokenBudgetConfig = serde_json::from_value(config).unwrap();
    TokenBudgetLayer::from_config(&config, Arc::new(FixedClock(AtomicU64::new(NOW)))).unwrap()
}

fn per_minute(tokens: u64, cut: bool) -> TokenBudgetLayer {
    layer(json!({"budgets": [{"window": "minute", "tokens": tokens}], "cutOffStreams": cut}))
}

type Upstream = Arc<AtomicUsize>;

fn service(
    l: &TokenBudgetLayer,
) -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<BudgetBody<portcullis_test_util::upstream::UpstreamBody>>,
        Error = Infallible,
    > + Clone,
    Upstream,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let inner = service_fn(
        move |req: Request<http_body_util::Either<Full<Bytes>, Full<Bytes>>>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(respond(req).await) }
        },
    );
    (l.layer(inner), calls)
}

fn chat(body: Value) -> Request<Full<Bytes>> {
    let mut r = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    r.extensions_mut().insert(
        Principal::builder("alice", AuthMethod::Jwt)
            .build()
            .unwrap(),
    );
    r
}

fn available(l: &TokenBudgetLayer) -> u64 {
    let r = chat(json!({}));
    l.available(r.headers(), r.extensions()).unwrap()
}

async fn run<S>(svc: &S, req: Request<Full<Bytes>>) -> (StatusCode, http::Extensions, String)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<BudgetBody<portcullis_test_util::upstream::UpstreamBody>>,
            Error = Infallible,
        > + Clone,
{
    let response = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.extensions,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

const PROMPT: &str = "one two three four"; // 18 chars + separator: 5 tokens + 4 framing = 9

#[tokio::test]
async fn json_responses_are_reconciled_with_their_usage() {
    let l = per_minute(1000, false);
    let (svc, calls) = service(&l);
    let (status, ext, body) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The mock reports 4 prompt tokens (words) and 5 completion tokens.
    assert_eq!(
        ext.get::<TokenUsage>(),
        Some(&TokenUsage::new(4, 5, UsageSource::Reported))
    );
    assert_eq!(available(&l), 1000 - 9);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], DEFAULT_REPLY);
}

#[tokio::test]
async fn a_request_the_budget_cannot_cover_is_refused_before_the_upstream() {
    let l = per_minute(50, false);
    let (svc, calls) = service(&l);
    let response = svc
        .clone()
        .oneshot(chat(
            json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["retry-after"],
        "15",
        "until the minute ends"
    );
    assert_eq!(
        response.extensions().get::<Rejection>().unwrap().reason(),
        Reason::TokenBudgetExceeded
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(available(&l), 50, "nothing was reserved");
    // Without max_tokens the default allowance (1024) is reserved, which does not fit either.
    let (status, _, _) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": "x"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // A request that fits goes through.
    let (status, _, _) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(available(&l), 50 - 9);
}

#[tokio::test]
async fn streams_are_reconciled_with_the_final_usage_event() {
    let l = per_minute(1000, false);
    let (svc, _) = service(&l);
    let (status, ext, body) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100, "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with("data: [DONE]\n\n"));
    // At response time only the estimate is known.
    assert_eq!(
        ext.get::<TokenUsage>().unwrap().source(),
        UsageSource::Estimated
    );
    assert_eq!(available(&l), 1000 - 9, "settled with the reported 4 + 5");
}

#[tokio::test]
async fn streams_without_usage_are_counted_from_their_deltas() {
    let l = per_minute(1000, false);
    let (svc, _) = service(&l);
    let (status, _, body) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100, "stream": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with("data: [DONE]\n\n"));
    // Prompt estimate 9; deltas "Hello " "from " "the " "mock " "model." = 2+2+1+2+2 tokens.
    assert_eq!(available(&l), 1000 - 9 - 9);
}

#[tokio::test]
async fn a_stream_past_the_budget_is_cut_off_cleanly() {
    let l = per_minute(60, true);
    let (svc, _) = service(&l);
    let mut req = chat(
        json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40, "stream": true}),
    );
    req.headers_mut()
        .insert("x-mock-reply", vec!["word"; 40].join(" ").parse().unwrap());
    let (status, _, body) = run(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let cut = std::str::from_utf8(CUT_OFF_EVENT).unwrap();
    assert!(body.ends_with(cut), "{body}");
    assert!(!body.contains("[DONE]"));
    let words = body.matches("\"content\":\"word").count();
    assert!(words < 40, "cut before the end: {words} words");
    assert_eq!(available(&l), 0, "the budget is spent");
    // And the next request is refused.
    let (status, _, _) = run(
        &svc,
        chat(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn other_requests_pass_through_and_bad_bodies_are_refused() {
    let l = layer(json!({"budgets": [{"window": "day", "tokens": 1000}], "maxBody": 64}));
    let (svc, calls) = service(&l);
    let mut get = Request::get("/v1/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    get.extensions_mut().insert(
        Principal::builder("alice", AuthMethod::Jwt)
            .build()
            .unwrap(),
    );
    let (status, ext, _) = run(&svc, get).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ext.get::<TokenUsage>().is_none());
    // No principal: nothing to charge, passes through.
    let anonymous = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        run(&svc, anonymous).await.0,
        StatusCode::BAD_REQUEST,
        "the mock's own answer to a body without messages"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let mut bad = chat(json!({}));
    *bad.body_mut() = Full::new(Bytes::from_static(b"{not json"));
    assert_eq!(run(&svc, bad).await.0, StatusCode::BAD_REQUEST);
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(100)}]}));
    assert_eq!(run(&svc, big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "refused bodies never reach the upstream"
    );
    assert_eq!(available(&l), 1000);
}

#[tokio::test]
async fn responses_without_usage_are_charged_the_estimate() {
    let l = per_minute(1000, false);
    let (svc, _) = service(&l);
    let mut req = Request::post("/v1/messages")
        .body(Full::new(Bytes::from(
            json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 30})
                .to_string(),
        )))
        .unwrap();
    req.extensions_mut().insert(
        Principal::builder("alice", AuthMethod::Jwt)
            .build()
            .unwrap(),
    );
    // The mock echoes /v1/messages without usage.
    let (status, ext, _) = run(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ext.get::<TokenUsage>(),
        Some(&TokenUsage::new(9, 30, UsageSource::Estimated))
    );
    assert_eq!(available(&l), 1000 - 39);
}

#[test]
fn configuration_errors() {
    let err = |v: Value| {
        let c: TokenBudgetConfig = serde_json::from_value(v).unwrap();
        TokenBudgetLayer::try_from(&c).unwrap_err()
    };
    assert_eq!(err(json!({"budgets": []})).field(), "budgets");
    assert_eq!(
        err(json!({"budgets": [{"window": "day", "tokens": 0}]})).field(),
        "budgets[0].tokens"
    );
    assert_eq!(
        err(json!({"budgets": [{"window": "day", "tokens": 1}, {"window": "day", "tokens": 2}]}))
            .field(),
        "budgets[1].window"
    );
    assert!(
        serde_json::from_value::<TokenBudgetConfig>(
            json!({"budgets": [{"window": "week", "tokens": 1}]})
        )
        .is_err()
    );
}

fn on_route(body: Value, route: portcullis_core::RouteInfo) -> Request<Full<Bytes>> {
    let mut r = chat(body);
    r.extensions_mut().insert(route);
    r
}

#[tokio::test]
async fn a_budget_by_model_learns_the_model_from_the_body_unless_the_route_names_one() {
    use portcullis_core::RouteInfo;
    let l = layer(json!({
        "key": ["subject", "model"],
        "budgets": [{"window": "minute", "tokens": 30}],
    }));
    let (svc, calls) = service(&l);
    let ask = |model: &str| {
        json!({"model": model, "max_tokens": 20,
        "messages": [{"role": "user", "content": PROMPT}]})
    };
    let chat_route = RouteInfo::new("chat").unwrap();
    // 9 estimated + 20 allowance fit in 30; the mock then reports 9 used, leaving 21.
    let (status, ext, body) = run(&svc, on_route(ask("small"), chat_route.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ext.get::<RouteInfo>().and_then(RouteInfo::model),
        Some("small"),
        "the response tells outer layers (audit) the model"
    );
    let (status, _, _) = run(&svc, on_route(ask("small"), chat_route.clone())).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "29 > 21 left for small"
    );
    // Another model has its own account.
    let (status, ext, _) = run(&svc, on_route(ask("large"), chat_route.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ext.get::<RouteInfo>().and_then(RouteInfo::model),
        Some("large")
    );
    // A route that names its model is charged to it whatever the body claims.
    let pinned = chat_route.clone().with_model("small").unwrap();
    let (status, _, _) = run(&svc, on_route(ask("large"), pinned)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "charged to small");
    // A model name that is not valid route text is not recorded, so no key: the policy does
    // not apply, as for any request that lacks what a policy counts by.
    let before = calls.load(Ordering::SeqCst);
    let (status, ext, _) = run(&svc, on_route(ask("bad\nname"), chat_route.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ext.get::<RouteInfo>().and_then(RouteInfo::model), None);
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    // Only the accounts of the two models were charged.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
