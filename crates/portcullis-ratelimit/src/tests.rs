use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use portcullis_core::{
    AuthMethod, ClientAddr, KeyKind, Principal, RateLimitDecision, Reason, Rejection, RouteInfo,
};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::*;

fn layer(
    config: serde_json::Value,
    clock: &FakeRelativeClock,
) -> RateLimitLayer<FakeRelativeClock> {
    let config: RateLimitConfig = serde_json::from_value(config).unwrap();
    RateLimitLayer::from_config(&config, clock.clone()).unwrap()
}

/// An upstream answering `status`, counting calls.
fn upstream(
    status: StatusCode,
) -> (
    impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future = impl Send>
    + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = Response::new(Bytes::new());
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        }
    });
    (svc, calls)
}

fn from(ip: &str) -> Request<()> {
    let mut r = Request::new(());
    let addr: SocketAddr = format!("{ip}:5000")
        .parse()
        .unwrap_or_else(|_| format!("[{ip}]:5000").parse().unwrap());
    r.extensions_mut().insert(ClientAddr::from_peer(addr));
    r
}

async fn send<S>(svc: &S, req: Request<()>) -> Response<Bytes>
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn exact_burst_and_refill() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"policies": [{"name": "per-ip", "key": "clientIp", "requests": 3, "per": "3s"}]}),
        &clock,
    );
    let (svc, calls) = upstream(StatusCode::OK);
    let svc = l.layer(svc);
    for remaining in [2, 1, 0] {
        let r = send(&svc, from("192.0.2.1")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=3;w=3");
        assert_eq!(
            r.headers()["ratelimit"],
            format!("\"per-ip\";r={remaining};t={}", 3 - remaining)
        );
        let d = r.extensions().get::<RateLimitDecision>().unwrap();
        assert_eq!(d.remaining(), remaining);
        assert!(!d.is_limited());
    }
    let r = send(&svc, from("192.0.2.1")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["ratelimit"], "\"per-ip\";r=0;t=1");
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=3;w=3");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        r.extensions().get::<Rejection>().unwrap().reason(),
        Reason::RateLimited
    );
    let d = r.extensions().get::<RateLimitDecision>().unwrap();
    assert!(d.is_limited());
    assert_eq!(d.key_kind(), KeyKind::ClientIp);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the upstream is not called when limited"
    );
    // Another client is unaffected.
    assert_eq!(send(&svc, from("192.0.2.2")).await.status(), StatusCode::OK);
    // One cell refills per second.
    clock.advance(Duration::from_millis(999));
    assert_eq!(
        send(&svc, from("192.0.2.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(send(&svc, from("192.0.2.1")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, from("192.0.2.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(3));
    for _ in 0..3 {
        assert_eq!(send(&svc, from("192.0.2.1")).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn burst_can_differ_from_the_rate() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"policies": [{"name": "p", "key": "global", "requests": 60, "per": "1m", "burst": 5}]}),
        &clock,
    );
    let (svc, _) = upstream(StatusCode::OK);
    let svc = l.layer(svc);
    for _ in 0..5 {
        assert_eq!(send(&svc, Request::new(())).await.status(), StatusCode::OK);
    }
    let r = send(&svc, Request::new(())).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-policy"], "\"p\";q=5;w=5");
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(&svc, Request::new(())).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn headers_on_success_can_be_disabled() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"headersOnSuccess": false, "policies": [{"name": "p", "key": "global", "requests": 1, "per": "1s"}]}),
        &clock,
    );
    let (svc, _) = upstream(StatusCode::OK);
    let svc = l.layer(svc);
    let r = send(&svc, Request::new(())).await;
    assert!(r.headers().get("ratelimit").is_none());
    assert!(r.extensions().get::<RateLimitDecision>().is_some());
    assert!(
        send(&svc, Request::new(()))
            .await
            .headers()
            .get("ratelimit")
            .is_some()
    );
}

fn principal_request(tenant: &str, model: &str) -> Request<()> {
    let mut r = Request::new(());
    r.extensions_mut().insert(
        Principal::builder("u", AuthMethod::Jwt)
            .tenant(tenant)
            .build()
            .unwrap(),
    );
    r.extensions_mut()
        .insert(RouteInfo::new("chat").unwrap().with_model(model).unwrap());
    r
}

#[tokio::test]
async fn composite_keys_and_the_most_restrictive_policy() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"policies": [
            {"name": "tenant-model", "key": ["tenant", "model"], "requests": 2, "per": "1m"},
            {"name": "tenant", "key": "tenant", "requests": 3, "per": "1m"},
        ]}),
        &clock,
    );
    let (svc, _) = upstream(StatusCode::OK);
    let svc = l.layer(svc);
    let r = send(&svc, principal_request("acme", "llama")).await;
    // tenant-model has 1 of 2 left (50%), tenant 2 of 3 (67%): tenant-model decides.
    assert_eq!(
        r.extensions().get::<RateLimitDecision>().unwrap().policy(),
        "tenant-model"
    );
    assert_eq!(
        send(&svc, principal_request("acme", "llama"))
            .await
            .status(),
        StatusCode::OK
    );
    let r = send(&svc, principal_request("acme", "llama")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.extensions().get::<RateLimitDecision>().unwrap().policy(),
        "tenant-model"
    );
    // Another model has its own tenant-model bucket, but the tenant policy is now spent.
    let r = send(&svc, principal_request("acme", "mistral")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.extensions().get::<RateLimitDecision>().unwrap().policy(),
        "tenant"
    );
    assert_eq!(
        r.extensions()
            .get::<RateLimitDecision>()
            .unwrap()
            .key_kind(),
        KeyKind::Tenant
    );
    // Another tenant is unaffected.
    assert_eq!(
        send(&svc, principal_request("globex", "llama"))
            .await
            .status(),
        StatusCode::OK
    );
    // A request without a principal has no key for these policies: they do not apply.
    let r = send(&svc, Request::new(())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.extensions().get::<RateLimitDecision>().is_none());
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_prefix() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"policies": [{"name": "p", "key": "clientIp", "ipv6Prefix": 64, "requests": 1, "per": "1m"}]}),
        &clock,
    );
    let (svc, _) = upstream(StatusCode::OK);
    let svc = l.layer(svc);
    assert_eq!(
        send(&svc, from("2001:db8:1:2::1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, from("2001:db8:1:2:ffff::9")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&svc, from("2001:db8:1:3::1")).await.status(),
        StatusCode::OK
    );
}

#[test]
fn a_million_distinct_keys_keep_memory_bounded_and_limiting_on() {
    let clock = FakeRelativeClock::default();
    let config: RateLimitConfig = serde_json::from_value(json!({"policies": [
        {"name": "p", "key": "clientIp", "requests": 10, "per": "1m", "maxKeys": 10_000}
    ]}))
    .unwrap();
    let l = RateLimitLayer::from_config(&config, clock.clone()).unwrap();
    let policy = &l.policies()[0];
    let victim = Key::Ip("198.51.100.1".parse().unwrap());
    for _ in 0..10 {
        assert!(!policy.check_key(&victim).is_limited());
    }
    let mut allowed = 0u64;
    for i in 0..1_000_000u32 {
        let key = Key::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + i,
        )));
        if !policy.check_key(&key).is_limited() {
            allowed += 1;
        }
        if i % 100_000 == 0 {
            assert!(policy.tracked_keys() <= policy.max_keys());
        }
    }
    assert!(policy.tracked_keys() <= policy.max_keys());
    assert!(policy.max_keys() < 11_000);
    assert!(policy.overflowed() > 0);
    // The keys that did not fit shared overflow buckets: far fewer than a million got through.
    assert!(allowed < 200_000, "{allowed}");
    // The victim's key was tracked before the flood and is still limited.
    assert!(policy.check_key(&victim).is_limited());
    // Once the flood's buckets have refilled they are idle and make room again.
    clock.advance(Duration::from_secs(120));
    policy.prune_idle();
    assert_eq!(policy.tracked_keys(), 0);
    assert!(!policy.check_key(&victim).is_limited());
}

#[tokio::test]
async fn brute_force_lockout_and_release() {
    let clock = FakeRelativeClock::default();
    let l = layer(
        json!({"bruteForce": {"statuses": [401, 403], "failures": 3, "per": "1m", "lockout": "5m"}}),
        &clock,
    );
    let (denied, calls) = upstream(StatusCode::UNAUTHORIZED);
    let svc = l.layer(denied);
    for _ in 0..4 {
        assert_eq!(
            send(&svc, from("203.0.113.5")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // The fourth failure within the minute locked the client out.
    let r = send(&svc, from("203.0.113.5")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.extensions().get::<Rejection>().unwrap().reason(),
        Reason::BruteForceLockout
    );
    assert_eq!(r.headers()["retry-after"], "300");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "locked-out requests never reach authentication"
    );
    // Other clients are not affected.
    assert_eq!(
        send(&svc, from("203.0.113.6")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    clock.advance(Duration::from_secs(299));
    assert_eq!(
        send(&svc, from("203.0.113.5")).await.headers()["retry-after"],
        "1"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        send(&svc, from("203.0.113.5")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(calls.load(Ordering::SeqCst), 6);

    // Successes do not count.
    let (ok, _) = upstream(StatusCode::OK);
    let svc = layer(
        json!({"bruteForce": {"failures": 1, "per": "1m", "lockout": "5m"}}),
        &clock,
    )
    .layer(ok);
    for _ in 0..10 {
        assert_eq!(
            send(&svc, from("203.0.113.7")).await.status(),
            StatusCode::OK
        );
    }
}

#[test]
fn configuration_errors() {
    let err = |v: serde_json::Value| {
        let c: RateLimitConfig = serde_json::from_value(v).unwrap();
        RateLimitLayer::from_config(&c, FakeRelativeClock::default()).unwrap_err()
    };
    assert_eq!(err(json!({})).field(), "policies");
    assert_eq!(
        err(json!({"policies": [{"name": "a b", "key": "global", "requests": 1, "per": "1s"}]}))
            .field(),
        "policies[0]"
    );
    assert_eq!(
        err(json!({"policies": [{"name": "a", "key": "global", "requests": 0, "per": "1s"}]}))
            .field(),
        "policies[0].requests"
    );
    assert_eq!(err(json!({"policies": [{"name": "a", "key": "global", "requests": 1, "per": "1s", "burst": 0}]})).field(), "policies[0].burst");
    assert_eq!(err(json!({"policies": [{"name": "a", "key": {"header": "bad header"}, "requests": 1, "per": "1s"}]})).field(), "policies[0].key.header");
    assert_eq!(
        err(json!({"policies": [{"name": "a", "key": ["tenant"], "requests": 1, "per": "1s"}]}))
            .field(),
        "policies[0].key"
    );
    assert_eq!(err(json!({"policies": [{"name": "a", "key": "clientIp", "ipv6Prefix": 200, "requests": 1, "per": "1s"}]})).field(), "policies[0].ipv6Prefix");
    assert_eq!(
        err(json!({"policies": [{"name": "a", "key": "global", "requests": 1, "per": "1s"}, {"name": "a", "key": "global", "requests": 1, "per": "1s"}]})).field(),
        "policies[1].name"
    );
    assert_eq!(
        err(
            json!({"bruteForce": {"statuses": [1000], "failures": 1, "per": "1m", "lockout": "1m"}})
        )
        .field(),
        "bruteForce.statuses[0]"
    );
    assert_eq!(
        err(json!({"bruteForce": {"failures": 1, "per": "1m", "lockout": 0}})).field(),
        "bruteForce.lockout"
    );
    assert!(
        serde_json::from_value::<RateLimitConfig>(
            json!({"policies": [{"name": "a", "key": "nonsense", "requests": 1, "per": "1s"}]})
        )
        .is_err()
    );
}
