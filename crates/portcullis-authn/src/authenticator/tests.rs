use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use jsonwebtoken::EncodingKey;
use portcullis_core::{PeerCertificate, Rejection, Thumbprint};
use portcullis_test_util::jwt::{DEFAULT_AUDIENCE, DEFAULT_ISSUER, TokenBuilder, now_unix};
use portcullis_test_util::{JwtKeys, TestPki};
use serde_json::json;
use tower::{Layer, ServiceExt};

use super::*;
use crate::apikey::{ApiKeyConfig, hash_api_key};
use crate::authz::AuthzConfig;
use crate::fetch::HttpFetch;
use crate::jwks::CachePolicy;
use crate::keys::KeySet;
use crate::layer::AuthnLayer;
use crate::testing::{ScriptedFetcher, jwks_of, upstream};
use portcullis_core::ManualClock;

fn keys() -> &'static JwtKeys {
    JwtKeys::shared().unwrap()
}

/// Every fixture key, with the RSA key's `alg` removed so it may verify any RSA algorithm.
fn inline_jwks() -> Arc<Jwks> {
    let mut doc: serde_json::Value = serde_json::from_str(&keys().jwks_json().unwrap()).unwrap();
    doc["keys"][0].as_object_mut().unwrap().remove("alg");
    Arc::new(Jwks::fixed(
        KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap(),
    ))
}

fn issuer(jwks: Arc<Jwks>) -> IssuerBuilder {
    IssuerBuilder::new(DEFAULT_ISSUER, jwks)
        .audience(DEFAULT_AUDIENCE)
        .tenant_claim("tid")
        .roles_claim("realm_access.roles")
        .keep_claim("email")
}

fn builder() -> AuthenticatorBuilder {
    Authenticator::builder()
        .realm("models")
        .issuer(issuer(inline_jwks()))
}

fn api_key_store() -> ApiKeyStore {
    ApiKeyStore::new(&[ApiKeyConfig {
        id: "batch".into(),
        sha256: hash_api_key("sk-batch-1"),
        subject: "svc-batch".into(),
        tenant: Some("acme".into()),
        scopes: vec!["embeddings".into()],
        roles: vec![],
        expires: None,
    }])
    .unwrap()
}

fn bearer(token: &str) -> Request<()> {
    Request::get("/v1/chat/completions")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

async fn send(auth: &Authenticator, req: Request<()>) -> (Response<Bytes>, usize) {
    let (svc, calls) = upstream();
    let response = AuthnLayer::new(auth.clone())
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    (response, calls.load(Ordering::SeqCst))
}

fn body(r: &Response<Bytes>) -> String {
    String::from_utf8(r.body().to_vec()).unwrap()
}

fn challenge(r: &Response<Bytes>) -> String {
    r.headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Asserts a rejection: status, reason, problem+json, and that the upstream was not called.
async fn assert_rejected(
    auth: &Authenticator,
    req: Request<()>,
    status: StatusCode,
    reason: portcullis_core::Reason,
) -> Response<Bytes> {
    let (response, calls) = send(auth, req).await;
    assert_eq!(response.status(), status, "{}", body(&response));
    assert_eq!(calls, 0, "the upstream must not be called");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        response
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        Some(reason)
    );
    response
}

async fn assert_invalid_token(auth: &Authenticator, token: &str, why: TokenError) {
    assert_eq!(
        auth.authenticate(bearer(token).headers(), bearer(token).extensions())
            .await
            .unwrap_err(),
        AuthnError::InvalidToken(why),
        "{token}"
    );
    let response = assert_rejected(
        auth,
        bearer(token),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::InvalidToken,
    )
    .await;
    assert!(
        challenge(&response).starts_with("Bearer realm=\"models\", error=\"invalid_token\""),
        "{}",
        challenge(&response)
    );
}

#[tokio::test]
async fn every_asymmetric_algorithm_is_accepted_with_its_key() {
    let auth = builder().build().unwrap();
    let k = keys();
    for (key, alg) in [
        (k.rsa(), Algorithm::RS256),
        (k.rsa(), Algorithm::RS384),
        (k.rsa(), Algorithm::RS512),
        (k.rsa(), Algorithm::PS256),
        (k.rsa(), Algorithm::PS384),
        (k.rsa(), Algorithm::PS512),
        (k.es256(), Algorithm::ES256),
        (k.es384(), Algorithm::ES384),
        (k.ed25519(), Algorithm::EdDSA),
    ] {
        let token = key.token().alg(alg).subject("alice").sign().unwrap();
        let (response, calls) = send(&auth, bearer(&token)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{alg:?}: {}",
            body(&response)
        );
        assert_eq!(calls, 1);
        assert!(body(&response).starts_with("alice|"));
    }
}

#[tokio::test]
async fn jwt_principal_fields() {
    let auth = builder().build().unwrap();
    let token = keys()
        .es256()
        .token()
        .subject("alice")
        .claim("tid", json!("acme"))
        .claim("scope", json!("chat:write models:read"))
        .claim("scp", json!(["extra"]))
        .claim("realm_access", json!({"roles": ["engineer"]}))
        .claim("email", json!("alice@example.org"))
        .sign()
        .unwrap();
    let req = bearer(&token);
    let p = auth
        .authenticate(req.headers(), req.extensions())
        .await
        .unwrap();
    assert_eq!(p.subject(), "alice");
    assert_eq!(p.method(), portcullis_core::AuthMethod::Jwt);
    assert_eq!(p.issuer(), Some(DEFAULT_ISSUER));
    assert_eq!(p.tenant(), Some("acme"));
    assert_eq!(p.key_id(), Some("ec256-1"));
    assert!(p.has_all_scopes(["chat:write", "models:read", "extra"]));
    assert!(p.has_role("engineer"));
    assert_eq!(p.claim("email"), Some(&json!("alice@example.org")));
}

#[tokio::test]
async fn the_principal_goes_out_on_the_response_for_the_audit_layer() {
    let auth = builder().build().unwrap();
    let token = keys().es256().token().subject("alice").sign().unwrap();
    let (response, calls) = send(&auth, bearer(&token)).await;
    assert_eq!((response.status(), calls), (StatusCode::OK, 1));
    let principal = response.extensions().get::<Principal>().unwrap();
    assert_eq!(principal.subject(), "alice");
}

#[tokio::test]
async fn missing_credentials_get_a_challenge() {
    let auth = builder()
        .api_keys(HeaderName::from_static("x-api-key"), api_key_store())
        .build()
        .unwrap();
    let response = assert_rejected(
        &auth,
        Request::new(()),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::MissingCredentials,
    )
    .await;
    let challenges: Vec<_> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .collect();
    assert_eq!(challenges.len(), 2);
    assert_eq!(challenges[0], "Bearer realm=\"models\"");
    // A non-Bearer Authorization scheme is not a credential this layer accepts.
    let basic = Request::get("/")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(())
        .unwrap();
    assert_rejected(
        &auth,
        basic,
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::MissingCredentials,
    )
    .await;
}

#[tokio::test]
async fn alg_none_and_unknown_algorithms_are_rejected() {
    let auth = builder().build().unwrap();
    let none = TokenBuilder::unsigned().kid("ec256-1").sign().unwrap();
    assert_invalid_token(&auth, &none, TokenError::Malformed).await;
    // `alg: none` with a non-empty signature still names an algorithm nobody verifies.
    let forged = format!("{none}c2ln");
    assert_invalid_token(&auth, &forged, TokenError::UnsupportedAlgorithm).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS1","kid":"ec256-1"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#);
    assert_invalid_token(
        &auth,
        &format!("{header}.{claims}.c2ln"),
        TokenError::UnsupportedAlgorithm,
    )
    .await;
}

#[tokio::test]
async fn algorithm_confusion_is_impossible() {
    let k = keys();
    // The RSA public key used as an HMAC secret, with the RSA key's kid.
    let forged = TokenBuilder::hmac(k.rsa().public_pem().as_bytes(), Algorithm::HS256)
        .kid(k.rsa().kid())
        .sign()
        .unwrap();
    let auth = builder().build().unwrap();
    assert_invalid_token(&auth, &forged, TokenError::AlgorithmNotAllowed).await;

    // Even an issuer that allows HS256 verifies it only with its configured secret.
    let both = Authenticator::builder()
        .realm("models")
        .issuer(
            issuer(inline_jwks())
                .algorithms([Algorithm::RS256, Algorithm::HS256])
                .hmac_secret(k.hmac_secret()),
        )
        .build()
        .unwrap();
    assert_invalid_token(&both, &forged, TokenError::BadSignature).await;
    let genuine = k.hs256_token().sign().unwrap();
    assert_eq!(
        send(&both, bearer(&genuine)).await.0.status(),
        StatusCode::OK
    );

    // An ES256 token presented under the RSA key's id.
    let swapped = k.es256().token().kid(k.rsa().kid()).sign().unwrap();
    assert_invalid_token(&auth, &swapped, TokenError::KeyMismatch).await;

    // An algorithm outside the issuer's allow-list.
    let rs_only = Authenticator::builder()
        .realm("models")
        .issuer(issuer(inline_jwks()).algorithms([Algorithm::RS256]))
        .build()
        .unwrap();
    let es = k.es256().token().sign().unwrap();
    assert_invalid_token(&rs_only, &es, TokenError::AlgorithmNotAllowed).await;
}

#[tokio::test]
async fn issuer_audience_and_signature_checks() {
    let auth = builder().build().unwrap();
    let k = keys();
    assert_invalid_token(
        &auth,
        &k.es256()
            .token()
            .issuer("https://evil.test")
            .sign()
            .unwrap(),
        TokenError::UnknownIssuer,
    )
    .await;
    assert_invalid_token(
        &auth,
        &k.es256().token().without("iss").sign().unwrap(),
        TokenError::UnknownIssuer,
    )
    .await;
    assert_invalid_token(
        &auth,
        &k.es256().token().audience("other").sign().unwrap(),
        TokenError::BadAudience,
    )
    .await;
    assert_invalid_token(
        &auth,
        &k.es256().token().without("aud").sign().unwrap(),
        TokenError::BadAudience,
    )
    .await;
    let multi = k
        .es256()
        .token()
        .claim("aud", json!(["other", DEFAULT_AUDIENCE]))
        .sign()
        .unwrap();
    assert_eq!(send(&auth, bearer(&multi)).await.0.status(), StatusCode::OK);
    assert_invalid_token(
        &auth,
        &k.es256().token().without("sub").sign().unwrap(),
        TokenError::MissingClaim("sub"),
    )
    .await;

    // Tampered payload: signature no longer matches.
    let token = k.es256().token().subject("alice").sign().unwrap();
    let mut parts: Vec<&str> = token.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "admin", "exp": now_unix() + 60}).to_string(),
    );
    parts[1] = &evil;
    assert_invalid_token(&auth, &parts.join("."), TokenError::BadSignature).await;

    // A token signed by a key the issuer does not have, under a known kid.
    let other = JwtKeys::generate().unwrap();
    assert_invalid_token(
        &auth,
        &other.es256().token().sign().unwrap(),
        TokenError::BadSignature,
    )
    .await;
    // An unknown kid on a fixed key set is rejected without any fetch.
    assert_invalid_token(
        &auth,
        &k.es256().token().kid("nope").sign().unwrap(),
        TokenError::UnknownKey,
    )
    .await;
    // No kid: the keys that fit the algorithm are tried.
    assert_eq!(
        send(&auth, bearer(&k.ed25519().token().no_kid().sign().unwrap()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn lifetimes_with_leeway() {
    let clock = ManualClock::frozen_now();
    let auth = builder()
        .clock(Arc::new(clock.clone()))
        .leeway(Duration::from_secs(60))
        .no_token_cache()
        .build()
        .unwrap();
    let k = keys();
    let now = clock.now_unix() as i64;
    let at = |exp: i64| k.es256().token().claim("exp", json!(exp)).sign().unwrap();
    assert_eq!(
        send(&auth, bearer(&at(now - 30))).await.0.status(),
        StatusCode::OK,
        "within leeway"
    );
    let response = assert_rejected(
        &auth,
        bearer(&at(now - 61)),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::ExpiredToken,
    )
    .await;
    assert!(challenge(&response).contains("error=\"invalid_token\""));
    let nbf = k
        .es256()
        .token()
        .claim("nbf", json!(now + 120))
        .sign()
        .unwrap();
    assert_rejected(
        &auth,
        bearer(&nbf),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::ExpiredToken,
    )
    .await;
    let nbf_soon = k
        .es256()
        .token()
        .claim("nbf", json!(now + 30))
        .sign()
        .unwrap();
    assert_eq!(
        send(&auth, bearer(&nbf_soon)).await.0.status(),
        StatusCode::OK
    );
    let iat = k
        .es256()
        .token()
        .claim("iat", json!(now + 3600))
        .claim("exp", json!(now + 7200))
        .sign()
        .unwrap();
    assert_invalid_token(&auth, &iat, TokenError::IssuedInFuture).await;
    assert_invalid_token(
        &auth,
        &k.es256().token().without("exp").sign().unwrap(),
        TokenError::MissingClaim("exp"),
    )
    .await;
    assert_invalid_token(
        &auth,
        &k.es256()
            .token()
            .claim("exp", json!("tomorrow"))
            .sign()
            .unwrap(),
        TokenError::BadClaim("exp"),
    )
    .await;
    // Fractional NumericDates are allowed.
    let frac = k
        .es256()
        .token()
        .claim("exp", json!(now as f64 + 100.5))
        .sign()
        .unwrap();
    assert_eq!(send(&auth, bearer(&frac)).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn size_and_shape_limits() {
    let auth = builder().build().unwrap();
    let k = keys();
    let big = k
        .es256()
        .token()
        .claim("pad", json!("x".repeat(9000)))
        .sign()
        .unwrap();
    assert_invalid_token(&auth, &big, TokenError::TooLarge).await;
    let small_limit = builder()
        .max_token_size(NonZeroUsize::new(100).unwrap())
        .build()
        .unwrap();
    assert_invalid_token(
        &small_limit,
        &k.es256().token().sign().unwrap(),
        TokenError::TooLarge,
    )
    .await;
    for bad in [
        "a",
        "a.b",
        "a.b.c.d",
        "..",
        "a..c",
        "!!!.e30.c2ln",
        "e30.!!!.c2ln",
        "bm90IGpzb24.e30.c2ln",
    ] {
        assert_invalid_token(&auth, bad, TokenError::Malformed).await;
    }
    // A JSON payload that is not an object.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
    assert_invalid_token(
        &auth,
        &format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
        TokenError::Malformed,
    )
    .await;
    // Characters outside the RFC 6750 token alphabet.
    let req = Request::get("/")
        .header("authorization", "Bearer a b")
        .body(())
        .unwrap();
    assert_rejected(
        &auth,
        req,
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::InvalidToken,
    )
    .await;
}

#[tokio::test]
async fn critical_headers_are_rejected() {
    let k = keys();
    let auth = Authenticator::builder()
        .realm("models")
        .issuer(IssuerBuilder::hmac(DEFAULT_ISSUER, k.hmac_secret()).audience(DEFAULT_AUDIENCE))
        .build()
        .unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["exp"]}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "x", "exp": now_unix() + 60})
            .to_string(),
    );
    let message = format!("{header}.{claims}");
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(k.hmac_secret()),
        Algorithm::HS256,
    )
    .unwrap();
    assert_invalid_token(
        &auth,
        &format!("{message}.{sig}"),
        TokenError::CriticalHeader,
    )
    .await;
    assert_eq!(
        send(&auth, bearer(&k.hs256_token().sign().unwrap()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    // HMAC without a configured secret for that algorithm is a configuration error.
    let err = Authenticator::builder()
        .issuer(issuer(inline_jwks()).algorithms([Algorithm::HS256]))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "jwt.issuers[0].algorithms");
    let err = Authenticator::builder()
        .issuer(IssuerBuilder::hmac(DEFAULT_ISSUER, b"short".to_vec()).audience("a"))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "jwt.issuers[0].hmacSecret");
}

#[tokio::test]
async fn api_keys() {
    let auth = Authenticator::builder()
        .realm("models")
        .api_keys(HeaderName::from_static("x-api-key"), api_key_store())
        .build()
        .unwrap();
    let req = Request::get("/")
        .header("x-api-key", "sk-batch-1")
        .body(())
        .unwrap();
    let p = auth
        .authenticate(req.headers(), req.extensions())
        .await
        .unwrap();
    assert_eq!(p.subject(), "svc-batch");
    assert_eq!(p.method(), portcullis_core::AuthMethod::ApiKey);
    assert_eq!(p.key_id(), Some("batch"));
    assert_eq!(p.tenant(), Some("acme"));
    assert!(p.has_scope("embeddings"));
    assert_eq!(send(&auth, req).await.0.status(), StatusCode::OK);

    let wrong = Request::get("/")
        .header("x-api-key", "sk-batch-2")
        .body(())
        .unwrap();
    let response = assert_rejected(
        &auth,
        wrong,
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::InvalidApiKey,
    )
    .await;
    assert_eq!(
        challenge(&response),
        "ApiKey realm=\"models\", header=\"x-api-key\""
    );
    assert!(!body(&response).contains("sk-batch-2"));

    let twice = Request::get("/")
        .header("x-api-key", "sk-batch-1")
        .header("x-api-key", "sk-batch-1")
        .body(())
        .unwrap();
    assert_rejected(
        &auth,
        twice,
        StatusCode::BAD_REQUEST,
        portcullis_core::Reason::AmbiguousCredentials,
    )
    .await;
}

#[tokio::test]
async fn several_credentials_are_ambiguous() {
    let auth = builder()
        .api_keys(HeaderName::from_static("x-api-key"), api_key_store())
        .build()
        .unwrap();
    let token = keys().es256().token().sign().unwrap();
    let mut both = bearer(&token);
    both.headers_mut()
        .insert("x-api-key", "sk-batch-1".parse().unwrap());
    let response = assert_rejected(
        &auth,
        both,
        StatusCode::BAD_REQUEST,
        portcullis_core::Reason::AmbiguousCredentials,
    )
    .await;
    assert!(challenge(&response).contains("error=\"invalid_request\""));
    let mut two = bearer(&token);
    two.headers_mut()
        .append("authorization", format!("Bearer {token}").parse().unwrap());
    assert_rejected(
        &auth,
        two,
        StatusCode::BAD_REQUEST,
        portcullis_core::Reason::AmbiguousCredentials,
    )
    .await;
}

fn peer_certificate(pki: &TestPki, which: &portcullis_test_util::TestCert) -> PeerCertificate {
    let der = which.cert_der().to_vec();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let mut thumb = [0u8; 32];
    thumb.copy_from_slice(digest.as_ref());
    let _ = pki;
    PeerCertificate::builder(der, Thumbprint::from_bytes(thumb))
        .subject("O=Portcullis Tests, CN=client")
        .issuer("O=Portcullis Tests, CN=Portcullis Test Intermediate CA")
        .serial(which.serial().to_be_bytes().to_vec())
        .validity(std::time::SystemTime::now(), std::time::SystemTime::now())
        .uri_san(portcullis_test_util::pki::CLIENT_SPIFFE_ID)
        .dns_san("client.portcullis.test")
        .build()
        .unwrap()
}

#[tokio::test]
async fn client_certificate_principals() {
    let pki = TestPki::generate().unwrap();
    let cert = peer_certificate(&pki, pki.client());
    let auth = Authenticator::builder()
        .client_certificates(SubjectFrom::SpiffeId)
        .build()
        .unwrap();
    let mut req = Request::new(());
    req.extensions_mut().insert(cert.clone());
    let p = auth
        .authenticate(req.headers(), req.extensions())
        .await
        .unwrap();
    assert_eq!(p.subject(), portcullis_test_util::pki::CLIENT_SPIFFE_ID);
    assert_eq!(p.method(), portcullis_core::AuthMethod::ClientCertificate);
    assert_eq!(p.key_id(), Some(cert.thumbprint().to_string().as_str()));
    assert_eq!(send(&auth, req).await.0.status(), StatusCode::OK);

    let dns = Authenticator::builder()
        .client_certificates(SubjectFrom::DnsSan)
        .build()
        .unwrap();
    let mut req = Request::new(());
    req.extensions_mut().insert(cert);
    assert_eq!(
        dns.authenticate(req.headers(), req.extensions())
            .await
            .unwrap()
            .subject(),
        "client.portcullis.test"
    );

    let response = assert_rejected(
        &auth,
        Request::new(()),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::MissingCredentials,
    )
    .await;
    assert_eq!(
        response.headers().get_all(WWW_AUTHENTICATE).iter().count(),
        1
    );
}

#[tokio::test]
async fn authorization_rules() {
    let rules: AuthzConfig = serde_json::from_value(json!({
        "scopes": {"all": ["chat:write"]},
        "claims": [{"claim": "tier", "oneOf": ["pro", "enterprise"]}],
    }))
    .unwrap();
    let auth = builder()
        .authorization(AuthzRules::try_from(&rules).unwrap())
        .api_keys(HeaderName::from_static("x-api-key"), api_key_store())
        .build()
        .unwrap();
    let k = keys();
    let ok = k
        .es256()
        .token()
        .claim("scope", json!("chat:write"))
        .claim("tier", json!("pro"))
        .sign()
        .unwrap();
    assert_eq!(send(&auth, bearer(&ok)).await.0.status(), StatusCode::OK);

    let no_scope = k
        .es256()
        .token()
        .claim("tier", json!("pro"))
        .sign()
        .unwrap();
    let response = assert_rejected(
        &auth,
        bearer(&no_scope),
        StatusCode::FORBIDDEN,
        portcullis_core::Reason::InsufficientScope,
    )
    .await;
    assert!(challenge(&response).contains("error=\"insufficient_scope\""));
    assert!(challenge(&response).contains("scope=\"chat:write\""));

    let free = k
        .es256()
        .token()
        .claim("scope", json!("chat:write"))
        .claim("tier", json!("free"))
        .sign()
        .unwrap();
    let response = assert_rejected(
        &auth,
        bearer(&free),
        StatusCode::FORBIDDEN,
        portcullis_core::Reason::Forbidden,
    )
    .await;
    assert!(challenge(&response).contains("error=\"insufficient_scope\""));

    // API keys carry no claims, so claim conditions fail closed for them.
    let req = Request::get("/")
        .header("x-api-key", "sk-batch-1")
        .body(())
        .unwrap();
    assert_rejected(
        &auth,
        req,
        StatusCode::FORBIDDEN,
        portcullis_core::Reason::InsufficientScope,
    )
    .await;
}

#[tokio::test]
async fn certificate_bound_tokens() {
    let pki = TestPki::generate().unwrap();
    let cert = peer_certificate(&pki, pki.client());
    let other = peer_certificate(&pki, pki.revoked_client());
    let auth = builder().build().unwrap();
    let k = keys();
    let bound = k
        .es256()
        .token()
        .claim("cnf", json!({"x5t#S256": cert.thumbprint().to_base64url()}))
        .sign()
        .unwrap();
    let with = |c: Option<&PeerCertificate>| {
        let mut req = bearer(&bound);
        if let Some(c) = c {
            req.extensions_mut().insert(c.clone());
        }
        req
    };
    assert_eq!(
        send(&auth, with(Some(&cert))).await.0.status(),
        StatusCode::OK
    );
    // The cache holds the token now; the binding is still checked on the hit.
    assert_invalid_token_req(&auth, with(Some(&other)), TokenError::CertificateMismatch).await;
    assert_invalid_token_req(&auth, with(None), TokenError::CertificateMismatch).await;

    let malformed = k
        .es256()
        .token()
        .claim("cnf", json!({"x5t#S256": "short"}))
        .sign()
        .unwrap();
    assert_invalid_token(&auth, &malformed, TokenError::BadClaim("cnf")).await;

    let strict = builder().require_bound_tokens(true).build().unwrap();
    assert_invalid_token(
        &strict,
        &k.es256().token().sign().unwrap(),
        TokenError::NotCertificateBound,
    )
    .await;
    assert_eq!(
        send(&strict, with(Some(&cert))).await.0.status(),
        StatusCode::OK
    );
}

async fn assert_invalid_token_req(auth: &Authenticator, req: Request<()>, why: TokenError) {
    assert_eq!(
        auth.authenticate(req.headers(), req.extensions())
            .await
            .unwrap_err(),
        AuthnError::InvalidToken(why)
    );
    assert_rejected(
        auth,
        req,
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::InvalidToken,
    )
    .await;
}

#[tokio::test]
async fn credentials_can_be_stripped() {
    let token = keys().es256().token().subject("alice").sign().unwrap();
    let keep = builder().build().unwrap();
    assert_eq!(
        body(&send(&keep, bearer(&token)).await.0),
        "alice|credential-visible=true"
    );
    let strip = builder().strip_credentials(true).build().unwrap();
    assert_eq!(
        body(&send(&strip, bearer(&token)).await.0),
        "alice|credential-visible=false"
    );
    let api = Authenticator::builder()
        .api_keys(HeaderName::from_static("x-api-key"), api_key_store())
        .strip_credentials(true)
        .build()
        .unwrap();
    let req = Request::get("/")
        .header("x-api-key", "sk-batch-1")
        .body(())
        .unwrap();
    assert_eq!(
        body(&send(&api, req).await.0),
        "svc-batch|credential-visible=false"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_until_they_expire() {
    let clock = ManualClock::frozen_now();
    let auth = builder().clock(Arc::new(clock.clone())).build().unwrap();
    let token = keys().es256().token().expires_in(120).sign().unwrap();
    for _ in 0..3 {
        assert_eq!(send(&auth, bearer(&token)).await.0.status(), StatusCode::OK);
    }
    let cache = auth.token_cache().unwrap();
    assert_eq!(cache.len(), 1);
    assert_eq!((cache.misses(), cache.hits()), (1, 2));
    // Past `exp` (+ leeway the cache does not extend): served from neither cache nor keys.
    clock.advance(121);
    assert_eq!(
        send(&auth, bearer(&token)).await.0.status(),
        StatusCode::OK,
        "inside the 60 s leeway"
    );
    clock.advance(60);
    assert_rejected(
        &auth,
        bearer(&token),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::ExpiredToken,
    )
    .await;
    // Rejections are not cached.
    let bad = keys().es256().token().audience("other").sign().unwrap();
    let before = cache.len();
    assert_rejected(
        &auth,
        bearer(&bad),
        StatusCode::UNAUTHORIZED,
        portcullis_core::Reason::InvalidToken,
    )
    .await;
    assert_eq!(cache.len(), before);
}

const JWKS_URL: &str = "https://idp.portcullis.test/jwks";

fn url_auth(fetcher: &Arc<ScriptedFetcher>, policy: CachePolicy) -> (Authenticator, Arc<Jwks>) {
    let jwks = Arc::new(Jwks::url(
        JWKS_URL,
        Arc::clone(fetcher) as Arc<dyn HttpFetch>,
        policy,
    ));
    let auth = Authenticator::builder()
        .realm("models")
        .issuer(issuer(Arc::clone(&jwks)))
        .no_token_cache()
        .build()
        .unwrap();
    (auth, jwks)
}

#[tokio::test(start_paused = true)]
async fn key_rotation_needs_exactly_one_refetch() {
    let k = keys();
    let fetcher = ScriptedFetcher::new();
    fetcher.serve(JWKS_URL, &jwks_of(&[k.es256()]), Some(3600));
    let (auth, jwks) = url_auth(&fetcher, CachePolicy::default());

    let old = k.es256().token().sign().unwrap();
    assert_eq!(send(&auth, bearer(&old)).await.0.status(), StatusCode::OK);
    assert_eq!(fetcher.calls(), 1, "the first request loads the keys");

    // The issuer rotates: the old key disappears, a new one appears. (Refetches for unknown
    // kids are at most once per minimum interval, counted from the last fetch.)
    fetcher.serve(JWKS_URL, &jwks_of(&[k.ed25519()]), Some(3600));
    tokio::time::advance(Duration::from_secs(31)).await;
    let new = k.ed25519().token().sign().unwrap();
    assert_eq!(send(&auth, bearer(&new)).await.0.status(), StatusCode::OK);
    assert_eq!(fetcher.calls(), 2, "one refetch for the unknown kid");
    assert_eq!(send(&auth, bearer(&new)).await.0.status(), StatusCode::OK);
    assert_eq!(fetcher.calls(), 2);

    // The old kid is gone; within the minimum interval it is rejected without another fetch.
    assert_invalid_token(&auth, &old, TokenError::UnknownKey).await;
    assert_eq!(fetcher.calls(), 2);
    assert!(!jwks.keys().unwrap().contains_kid(k.es256().kid()));
}

#[tokio::test(start_paused = true)]
async fn endpoint_down_keeps_serving_cached_keys() {
    let k = keys();
    let fetcher = ScriptedFetcher::new();
    fetcher.serve(JWKS_URL, &jwks_of(&[k.es256()]), Some(300));
    let (auth, jwks) = url_auth(&fetcher, CachePolicy::default());
    let token = k.es256().token().sign().unwrap();
    assert_eq!(send(&auth, bearer(&token)).await.0.status(), StatusCode::OK);

    fetcher.fail(JWKS_URL);
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(jwks.is_stale());
    // Stale keys still verify; a background refresh is attempted and fails.
    assert_eq!(send(&auth, bearer(&token)).await.0.status(), StatusCode::OK);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let status = jwks.status();
    assert_eq!(status.keys, 1);
    assert!(status.stale);
    assert_eq!(status.consecutive_failures, 1);
    assert!(status.last_error.is_some());
    assert_eq!(send(&auth, bearer(&token)).await.0.status(), StatusCode::OK);

    // An unknown kid during the outage: one more attempt (past the interval), then a clean 401.
    tokio::time::advance(Duration::from_secs(31)).await;
    let unknown = k.ed25519().token().sign().unwrap();
    assert_invalid_token(&auth, &unknown, TokenError::UnknownKey).await;
    assert_eq!(send(&auth, bearer(&token)).await.0.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn keys_never_loaded_fail_closed_with_503() {
    let fetcher = ScriptedFetcher::new();
    fetcher.status(JWKS_URL, 500);
    let (auth, _) = url_auth(&fetcher, CachePolicy::default());
    let token = keys().es256().token().sign().unwrap();
    let response = assert_rejected(
        &auth,
        bearer(&token),
        StatusCode::SERVICE_UNAVAILABLE,
        portcullis_core::Reason::KeysUnavailable,
    )
    .await;
    assert_eq!(response.headers()[RETRY_AFTER], "5");
    assert_eq!(fetcher.calls(), 1);
    // Within the minimum interval, no new attempt is made.
    assert_rejected(
        &auth,
        bearer(&token),
        StatusCode::SERVICE_UNAVAILABLE,
        portcullis_core::Reason::KeysUnavailable,
    )
    .await;
    assert_eq!(fetcher.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_unknown_kids_cause_one_fetch() {
    let k = keys();
    let fetcher = ScriptedFetcher::new();
    fetcher.serve(JWKS_URL, &jwks_of(&[k.es256()]), Some(3600));
    let (auth, _) = url_auth(&fetcher, CachePolicy::default());
    // Load the first set.
    assert_eq!(
        send(&auth, bearer(&k.es256().token().sign().unwrap()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    assert_eq!(fetcher.calls(), 1);

    fetcher.serve(JWKS_URL, &jwks_of(&[k.es256(), k.ed25519()]), Some(3600));
    fetcher.delay(Duration::from_millis(50));
    tokio::time::advance(Duration::from_secs(31)).await;
    let token = k.ed25519().token().sign().unwrap();
    let (svc, calls) = upstream();
    let service = AuthnLayer::new(auth.clone()).layer(svc);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let service = service.clone();
        let req = bearer(&token);
        tasks.spawn(async move { service.oneshot(req).await.unwrap().status() });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        if status.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
    assert_eq!(fetcher.calls(), 2, "one fetch for the thousand");
}
