use super::*;
use crate::fetch::{HttpsFetcher, roots_from_pem};
use crate::testing::{ScriptedFetcher, jwks_of};
use portcullis_test_util::{DocumentServer, JwtKeys, TestPki};

const URL: &str = "https://idp.test/jwks";

fn keys() -> &'static JwtKeys {
    JwtKeys::shared().unwrap()
}

fn fetcher_with(doc: &str, max_age: Option<u64>) -> Arc<ScriptedFetcher> {
    let f = ScriptedFetcher::new();
    f.serve(URL, doc, max_age);
    f
}

#[tokio::test(start_paused = true)]
async fn single_flight_under_concurrency() {
    let fetcher = fetcher_with(&jwks_of(&[keys().es256()]), None);
    fetcher.delay(Duration::from_millis(20));
    let jwks = Arc::new(Jwks::url(URL, fetcher.clone(), CachePolicy::default()));
    let epoch = jwks.epoch();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let jwks = Arc::clone(&jwks);
        tasks.spawn(async move { jwks.refresh(epoch).await.map(|k| k.len()) });
    }
    while let Some(n) = tasks.join_next().await {
        assert_eq!(n.unwrap(), Some(1));
    }
    assert_eq!(fetcher.calls(), 1);
    assert_eq!(jwks.status().fetches, 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_are_rate_limited_and_failures_keep_the_last_keys() {
    let fetcher = fetcher_with(&jwks_of(&[keys().es256()]), None);
    let jwks = Jwks::url(URL, fetcher.clone(), CachePolicy::default());
    assert!(jwks.keys().is_none());
    jwks.refresh(jwks.epoch()).await.unwrap();
    assert_eq!(fetcher.calls(), 1);
    // Within the interval: no fetch.
    jwks.refresh(jwks.epoch()).await.unwrap();
    assert_eq!(fetcher.calls(), 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    fetcher.fail(URL);
    let kept = jwks.refresh(jwks.epoch()).await.unwrap();
    assert_eq!(fetcher.calls(), 2);
    assert_eq!(kept.len(), 1, "stale-if-error");
    let status = jwks.status();
    assert_eq!(status.consecutive_failures, 1);
    assert!(matches!(status.last_error, Some(JwksError::Fetch(_))));
    // A failure also waits out the interval.
    jwks.refresh(jwks.epoch()).await.unwrap();
    assert_eq!(fetcher.calls(), 2);
    // Recovery clears the error.
    tokio::time::advance(Duration::from_secs(30)).await;
    fetcher.serve(URL, &jwks_of(&[keys().es256(), keys().es384()]), None);
    assert_eq!(jwks.refresh(jwks.epoch()).await.unwrap().len(), 2);
    assert_eq!(jwks.status().consecutive_failures, 0);
    assert_eq!(jwks.status().last_error, None);
    // Bad documents and statuses are failures too, and do not replace good keys.
    for bad in ["{}", r#"{"keys": []}"#] {
        tokio::time::advance(Duration::from_secs(30)).await;
        fetcher.serve(URL, bad, None);
        assert_eq!(jwks.refresh(jwks.epoch()).await.unwrap().len(), 2);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    fetcher.status(URL, 503);
    assert_eq!(jwks.refresh(jwks.epoch()).await.unwrap().len(), 2);
    assert_eq!(jwks.status().last_error, Some(JwksError::Status(503)));
}

#[tokio::test(start_paused = true)]
async fn max_age_is_honoured_within_bounds() {
    let policy = CachePolicy {
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(10),
    };
    for (max_age, ttl) in [
        (Some(120), 120),
        (Some(5), 60),
        (Some(999_999), 3600),
        (None, 600),
        (Some(0), 60),
    ] {
        let fetcher = fetcher_with(&jwks_of(&[keys().es256()]), max_age);
        let jwks = Jwks::url(URL, fetcher, policy);
        jwks.refresh(0).await.unwrap();
        tokio::time::advance(Duration::from_secs(ttl - 1)).await;
        assert!(!jwks.is_stale(), "max-age {max_age:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(jwks.is_stale(), "max-age {max_age:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn stale_keys_are_refreshed_once_in_the_background() {
    let fetcher = fetcher_with(&jwks_of(&[keys().es256()]), Some(300));
    let jwks = Arc::new(Jwks::url(URL, fetcher.clone(), CachePolicy::default()));
    jwks.refresh(0).await.unwrap();
    jwks.refresh_in_background();
    tokio::task::yield_now().await;
    assert_eq!(fetcher.calls(), 1, "fresh keys are not refreshed");
    tokio::time::advance(Duration::from_secs(300)).await;
    fetcher.serve(URL, &jwks_of(&[keys().es384()]), Some(300));
    for _ in 0..100 {
        jwks.refresh_in_background();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fetcher.calls(), 2);
    assert!(jwks.keys().unwrap().contains_kid(keys().es384().kid()));
    assert!(!jwks.is_stale());
}

#[tokio::test(start_paused = true)]
async fn oidc_discovery() {
    let issuer = "https://login.test/tenant";
    let discovery = "https://login.test/tenant/.well-known/openid-configuration";
    let fetcher = ScriptedFetcher::new();
    fetcher.serve(
        discovery,
        &serde_json::json!({"issuer": issuer, "jwks_uri": URL}).to_string(),
        None,
    );
    fetcher.serve(URL, &jwks_of(&[keys().ed25519()]), None);
    let jwks = Jwks::discovery(issuer, fetcher.clone(), CachePolicy::default());
    assert!(jwks.refresh(0).await.unwrap().contains_kid("ed25519-1"));
    assert_eq!(fetcher.calls(), 2);
    // The jwks_uri is remembered.
    tokio::time::advance(Duration::from_secs(30)).await;
    jwks.refresh(jwks.epoch()).await.unwrap();
    assert_eq!(fetcher.calls(), 3);

    // A discovery document for another issuer is refused.
    let evil = ScriptedFetcher::new();
    evil.serve(
        discovery,
        &serde_json::json!({"issuer": "https://evil.test", "jwks_uri": URL}).to_string(),
        None,
    );
    evil.serve(URL, &jwks_of(&[keys().ed25519()]), None);
    let jwks = Jwks::discovery(issuer, evil, CachePolicy::default());
    assert!(jwks.refresh(0).await.is_none());
    assert!(matches!(
        jwks.status().last_error,
        Some(JwksError::Discovery(_))
    ));
}

#[tokio::test]
async fn file_source_follows_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(&[keys().es256()])).unwrap();
    let policy = CachePolicy {
        min_refresh_interval: Duration::ZERO,
        ..CachePolicy::default()
    };
    let jwks = Jwks::file(&path, policy);
    assert!(jwks.refresh(0).await.unwrap().contains_kid("ec256-1"));
    std::fs::write(&path, jwks_of(&[keys().rsa()])).unwrap();
    let keys_now = jwks.refresh(jwks.epoch()).await.unwrap();
    assert!(keys_now.contains_kid("rsa-1") && !keys_now.contains_kid("ec256-1"));
    std::fs::remove_file(&path).unwrap();
    assert!(
        jwks.refresh(jwks.epoch())
            .await
            .unwrap()
            .contains_kid("rsa-1")
    );
    assert!(jwks.status().last_error.is_some());
}

#[tokio::test]
async fn fixed_sets_never_fetch() {
    let set = KeySet::from_jwks_json(jwks_of(&[keys().es256()]).as_bytes()).unwrap();
    let jwks = Arc::new(Jwks::fixed(set));
    assert!(!jwks.refreshable());
    assert_eq!(jwks.refresh(0).await.unwrap().len(), 1);
    jwks.refresh_in_background();
    assert_eq!(jwks.status().fetches, 0);
}

#[tokio::test]
async fn fetches_over_real_https_with_a_configured_ca() {
    let pki = TestPki::generate().unwrap();
    let server = DocumentServer::start(Some(pki.server())).await.unwrap();
    server.serve("/jwks", jwks_of(&[keys().es256()]), Some(120));
    let roots = roots_from_pem(pki.root().cert_pem().as_bytes()).unwrap();
    let fetcher = Arc::new(HttpsFetcher::new(roots, Duration::from_secs(5)).unwrap());
    let jwks = Jwks::url(server.url("/jwks"), fetcher, CachePolicy::default());
    assert!(jwks.refresh(0).await.unwrap().contains_kid("ec256-1"));
    assert_eq!(server.hits(), 1);

    // The web PKI does not trust the test CA: the handshake fails and nothing is loaded.
    let untrusting =
        Arc::new(HttpsFetcher::new(crate::fetch::webpki_roots(), Duration::from_secs(5)).unwrap());
    let jwks = Jwks::url(server.url("/jwks"), untrusting, CachePolicy::default());
    assert!(jwks.refresh(0).await.is_none());
    assert!(matches!(
        jwks.status().last_error,
        Some(JwksError::Fetch(_))
    ));

    // Plain HTTP is refused unless explicitly allowed.
    let plain = DocumentServer::start(None).await.unwrap();
    plain.serve("/jwks", jwks_of(&[keys().es256()]), None);
    let roots = roots_from_pem(pki.root().cert_pem().as_bytes()).unwrap();
    let strict = Arc::new(HttpsFetcher::new(roots.clone(), Duration::from_secs(5)).unwrap());
    assert!(
        Jwks::url(plain.url("/jwks"), strict, CachePolicy::default())
            .refresh(0)
            .await
            .is_none()
    );
    let lax = Arc::new(
        HttpsFetcher::new(roots, Duration::from_secs(5))
            .unwrap()
            .allow_insecure_http(),
    );
    assert!(
        Jwks::url(plain.url("/jwks"), lax, CachePolicy::default())
            .refresh(0)
            .await
            .is_some()
    );
}
