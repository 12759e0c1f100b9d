//! Global limits against a real `redis-server` started per test on a free loopback port.
//! `.ci/run` installs redis-server; without it these tests fail with an explanation.

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use portcullis_core::{Reason, Rejection};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::*;

struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut server = Self { port, child: None };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the global rate-limit tests (apt-get install redis-server; .ci/run does this)");
        self.child = Some(child);
        // Wait (bounded) for the server to answer PING.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                    let mut buf = [0u8; 7];
                    if s.write_all(b"PING\r\n").await.is_ok()
                        && s.read_exact(&mut buf).await.is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn layer(redis: &RedisServer, requests: u32, mode: &str) -> RateLimitLayer {
    let config: RateLimitConfig = serde_json::from_value(json!({
        "redis": {"url": redis.url(), "timeout": "200ms", "failureMode": mode, "backoff": "50ms"},
        "policies": [{"name": "shared", "key": "global", "requests": requests, "per": "1h", "global": true}],
    }))
    .unwrap();
    RateLimitLayer::try_from(&config).unwrap()
}

fn ok_service()
-> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Bytes::new())) })
}

async fn status<S>(svc: &S) -> (StatusCode, Option<Reason>)
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone,
{
    let r = svc.clone().oneshot(Request::new(())).await.unwrap();
    (
        r.status(),
        r.extensions().get::<Rejection>().map(Rejection::reason),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_enforce_one_quota_together_under_concurrency() {
    let redis = RedisServer::start().await;
    let a = layer(&redis, 20, "failOpen").layer(ok_service());
    let b = layer(&redis, 20, "failOpen").layer(ok_service());
    let allowed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        let allowed = Arc::clone(&allowed);
        tasks.spawn(async move {
            if status(&svc).await.0 == StatusCode::OK {
                allowed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(
        allowed.load(Ordering::SeqCst),
        20,
        "exactly the quota, across both limiters"
    );
    let r = b.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-policy"], "\"shared\";q=20;w=3600");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (170..=181).contains(&retry),
        "one unit refills every 180 s: {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_to_the_local_limiter_and_recovers() {
    let mut redis = RedisServer::start().await;
    let a = layer(&redis, 3, "failOpen").layer(ok_service());
    let b = layer(&redis, 3, "failOpen").layer(ok_service());
    for _ in 0..3 {
        assert_eq!(status(&a).await.0, StatusCode::OK);
    }
    assert_eq!(
        status(&b).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the quota is shared"
    );

    redis.kill();
    // Fail open: B's own local limiter (untouched so far) decides.
    for _ in 0..3 {
        assert_eq!(status(&b).await.0, StatusCode::OK);
    }
    assert_eq!(
        status(&b).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the local limiter still limits"
    );

    // Redis comes back (empty): decisions return to the shared quota once the back-off ends and
    // the connection manager has reconnected.
    redis.spawn().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // A fresh layer's local limiter would allow; only Redis can refuse after A's 3.
            let (s, _) = status(&a).await;
            if s == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("recovered");
    let fresh = layer(&redis, 3, "failOpen").layer(ok_service());
    assert_eq!(
        status(&fresh).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "decided by Redis again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_with_503() {
    let mut redis = RedisServer::start().await;
    let svc = layer(&redis, 100, "failClosed").layer(ok_service());
    assert_eq!(status(&svc).await.0, StatusCode::OK);
    redis.kill();
    assert_eq!(
        status(&svc).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Reason::RateLimitUnavailable)
        )
    );
    // During the back-off no call is attempted; the answer is the same, at once.
    assert_eq!(status(&svc).await.0, StatusCode::SERVICE_UNAVAILABLE);
    redis.spawn().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while status(&svc).await.0 != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("recovered");
}

#[test]
fn global_policies_need_redis() {
    let config: RateLimitConfig = serde_json::from_value(json!({
        "policies": [{"name": "g", "key": "global", "requests": 1, "per": "1s", "global": true}],
    }))
    .unwrap();
    let err = RateLimitLayer::try_from(&config).unwrap_err();
    assert_eq!(err.field(), "policies[0].global");
    let config: RateLimitConfig = serde_json::from_value(json!({
        "redis": {"url": "http://nope"},
        "policies": [{"name": "g", "key": "global", "requests": 1, "per": "1s", "global": true}],
    }))
    .unwrap();
    assert_eq!(
        RateLimitLayer::try_from(&config).unwrap_err().field(),
        "redis.url"
    );
}

mod budgets {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use portcullis_core::{AuthMethod, Principal};
    use portcullis_test_util::upstream::respond;

    fn budget(redis: &RedisServer, tokens: u64, mode: &str) -> TokenBudgetLayer {
        let config: TokenBudgetConfig = serde_json::from_value(json!({
            "budgets": [{"window": "day", "tokens": tokens}],
            "redis": {"url": redis.url(), "timeout": "200ms", "failureMode": mode, "backoff": "50ms"},
        }))
        .unwrap();
        TokenBudgetLayer::try_from(&config).unwrap()
    }

    async fn ask(l: &TokenBudgetLayer, max_tokens: u64) -> StatusCode {
        let svc = l.layer(service_fn(
            |req: Request<http_body_util::Either<Full<Bytes>, Full<Bytes>>>| async move {
                Ok::<_, Infallible>(respond(req).await)
            },
        ));
        let mut req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(
                json!({"messages": [{"role": "user", "content": "one two three four"}], "max_tokens": max_tokens}).to_string(),
            )))
            .unwrap();
        req.extensions_mut().insert(
            Principal::builder("alice", AuthMethod::Jwt)
                .build()
                .unwrap(),
        );
        let response = svc.oneshot(req).await.unwrap();
        let status = response.status();
        let _ = response.into_body().collect().await;
        status
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_one_token_budget() {
        let redis = RedisServer::start().await;
        let a = budget(&redis, 100, "failOpen");
        let b = budget(&redis, 100, "failOpen");
        // A reserves 9 + 80 and is settled down to the 9 tokens the mock reports.
        assert_eq!(ask(&a, 80).await, StatusCode::OK);
        // Once A's settlement has landed in Redis, B fits the same reservation.
        tokio::time::timeout(Duration::from_secs(10), async {
            while ask(&b, 80).await != StatusCode::OK {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("settlement landed");
        // 9 + 9 used; another 89 would exceed 100 on either replica, though A's local
        // accounts alone would allow it.
        assert_eq!(ask(&a, 80).await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ask(&b, 80).await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ask(&a, 60).await, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn budgets_follow_the_failure_mode_when_redis_is_down() {
        let mut redis = RedisServer::start().await;
        let closed = budget(&redis, 1000, "failClosed");
        let open = budget(&redis, 1000, "failOpen");
        assert_eq!(ask(&closed, 10).await, StatusCode::OK);
        redis.kill();
        assert_eq!(ask(&closed, 10).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ask(&open, 10).await,
            StatusCode::OK,
            "decided by the local accounts"
        );
        assert_eq!(
            ask(&open, 2000).await,
            StatusCode::TOO_MANY_REQUESTS,
            "which still limit"
        );
    }
}
