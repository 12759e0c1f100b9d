use super::*;
use crate::apikey::hash_api_key;
use crate::error::AuthnError;
use http::Request;
use portcullis_test_util::jwt::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use portcullis_test_util::{DocumentServer, JwtKeys, TestPki};
use serde_json::json;

fn keys() -> &'static JwtKeys {
    JwtKeys::shared().unwrap()
}

fn parse(value: serde_json::Value) -> AuthnConfig {
    serde_json::from_value(value).unwrap()
}

fn build_err(value: serde_json::Value) -> ConfigError {
    Authenticator::try_from(parse(value)).unwrap_err()
}

fn inline_issuer() -> serde_json::Value {
    json!({
        "issuer": DEFAULT_ISSUER,
        "audiences": [DEFAULT_AUDIENCE],
        "jwks": {"inline": serde_json::from_str::<serde_json::Value>(&keys().jwks_json().unwrap()).unwrap()},
    })
}

fn bearer(token: &str) -> Request<()> {
    Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn a_full_configuration_builds_and_works() {
    let config = parse(json!({
        "methods": ["jwt", "apiKey"],
        "realm": "models",
        "stripCredentials": true,
        "jwt": {
            "leeway": "30s",
            "maxTokenSize": 4096,
            "cache": {"capacity": 100, "maxTtl": "1m"},
            "issuers": [{
                "issuer": DEFAULT_ISSUER,
                "audiences": [DEFAULT_AUDIENCE],
                "algorithms": ["ES256", "EdDSA"],
                "jwks": {"inline": serde_json::from_str::<serde_json::Value>(&keys().jwks_json().unwrap()).unwrap()},
                "claims": {"tenant": "tid", "roles": "roles", "keep": ["email"]},
            }],
        },
        "apiKeys": {"keys": [{"id": "k1", "sha256": hash_api_key("sk-1"), "subject": "svc"}]},
        "authorization": {"scopes": {"any": ["chat:write"]}},
    }));
    let auth = Authenticator::try_from(&config).unwrap();
    let token = keys()
        .es256()
        .token()
        .claim("tid", json!("acme"))
        .claim("scope", json!("chat:write"))
        .sign()
        .unwrap();
    let req = bearer(&token);
    let p = auth
        .authenticate(req.headers(), req.extensions())
        .await
        .unwrap();
    assert_eq!(p.tenant(), Some("acme"));
    // RS256 is not in this issuer's allow-list.
    let rs = keys()
        .rsa()
        .token()
        .claim("scope", json!("chat:write"))
        .sign()
        .unwrap();
    let req = bearer(&rs);
    assert_eq!(
        auth.authenticate(req.headers(), req.extensions())
            .await
            .unwrap_err(),
        AuthnError::InvalidToken(crate::error::TokenError::AlgorithmNotAllowed)
    );
    // The API key authenticates but lacks the scope.
    let req = Request::get("/")
        .header("x-api-key", "sk-1")
        .body(())
        .unwrap();
    assert_eq!(
        auth.authenticate(req.headers(), req.extensions())
            .await
            .unwrap_err(),
        AuthnError::InsufficientScope
    );
    assert!(AuthnLayer::try_from(config).is_ok());
}

#[test]
fn configuration_errors_name_the_field_and_the_fix() {
    let err = build_err(json!({}));
    assert_eq!(err.field(), "methods");
    let err = build_err(json!({"methods": ["apiKey"], "jwt": {"issuers": [inline_issuer()]}}));
    assert_eq!(err.field(), "methods");
    let err = build_err(json!({"jwt": {"issuers": []}}));
    assert_eq!(err.field(), "jwt.issuers");
    let mut no_aud = inline_issuer();
    no_aud["audiences"] = json!([]);
    let err = build_err(json!({"jwt": {"issuers": [no_aud]}}));
    assert_eq!(err.field(), "jwt.issuers[0].audiences");
    assert!(err.fix().contains("allowAnyAudience"));
    let mut none = inline_issuer();
    none["algorithms"] = json!(["RS256", "none"]);
    let err = build_err(json!({"jwt": {"issuers": [none]}}));
    assert_eq!(err.field(), "jwt.issuers[0].algorithms[1]");
    let mut hs = inline_issuer();
    hs["algorithms"] = json!(["HS256"]);
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [hs]}})).field(),
        "jwt.issuers[0].algorithms"
    );
    let mut two = inline_issuer();
    two["jwks"]["url"] = json!("https://x.test/jwks");
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [two]}})).field(),
        "jwt.issuers[0].jwks"
    );
    let mut http = inline_issuer();
    http["jwks"] = json!({"url": "http://x.test/jwks"});
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [http]}})).field(),
        "jwt.issuers[0].jwks.url"
    );
    let mut disc = inline_issuer();
    disc["issuer"] = json!("http://login.test");
    disc["jwks"] = json!({"discovery": true});
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [disc]}})).field(),
        "jwt.issuers[0].jwks.discovery"
    );
    let mut bad_inline = inline_issuer();
    bad_inline["jwks"] = json!({"inline": {"keys": []}});
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [bad_inline]}})).field(),
        "jwt.issuers[0].jwks.inline"
    );
    let mut missing_ca = inline_issuer();
    missing_ca["jwks"] = json!({"url": "https://x.test/jwks", "caFile": "/nonexistent/ca.pem"});
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [missing_ca]}})).field(),
        "jwt.issuers[0].jwks.caFile"
    );
    let mut bad_claim = inline_issuer();
    bad_claim["claims"] = json!({"tenant": "a..b"});
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [bad_claim]}})).field(),
        "jwt.issuers[0].claims.tenant"
    );
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [inline_issuer(), inline_issuer()]}})).field(),
        "jwt.issuers[1].issuer"
    );
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [inline_issuer()], "leeway": "10m"}})).field(),
        "jwt.leeway"
    );
    assert_eq!(
        build_err(json!({"jwt": {"issuers": [inline_issuer()], "maxTokenSize": 0}})).field(),
        "jwt.maxTokenSize"
    );
    assert_eq!(
        build_err(json!({"apiKeys": {"header": "authorization", "keys": []}})).field(),
        "apiKeys.header"
    );
    assert_eq!(
        build_err(json!({"apiKeys": {"header": "bad header", "keys": []}})).field(),
        "apiKeys.header"
    );
    assert_eq!(
        build_err(
            json!({"apiKeys": {"keys": [{"id": "a", "sha256": "plaintext", "subject": "s"}]}})
        )
        .field(),
        "apiKeys.keys[0].sha256"
    );
    assert_eq!(
        build_err(json!({"apiKeys": {"keys": []}, "authorization": {"scopes": {"all": []}}}))
            .field(),
        "authorization.scopes"
    );
    assert_eq!(
        build_err(json!({"apiKeys": {"keys": []}, "realm": "a\"b"})).field(),
        "realm"
    );
    // Unknown fields are rejected by serde, with the field's name.
    let err = serde_json::from_value::<AuthnConfig>(json!({"jwt": {"issuers": [], "leway": "1s"}}))
        .unwrap_err();
    assert!(err.to_string().contains("leway"), "{err}");
}

#[test]
fn hmac_secrets_come_from_base64_or_files_and_are_never_printed() {
    let secret = base64::engine::general_purpose::STANDARD.encode(keys().hmac_secret());
    let config = parse(json!({"jwt": {"issuers": [{
        "issuer": DEFAULT_ISSUER,
        "audiences": [DEFAULT_AUDIENCE],
        "algorithms": ["HS256"],
        "hmacSecret": {"base64": secret},
    }]}}));
    assert!(!format!("{config:?}").contains(&secret));
    let auth = Authenticator::try_from(&config).unwrap();
    let req = bearer(&keys().hs256_token().sign().unwrap());
    assert!(
        auth.authenticate_now(req.headers(), req.extensions())
            .is_ok()
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, keys().hmac_secret()).unwrap();
    let config = parse(json!({"jwt": {"issuers": [{
        "issuer": DEFAULT_ISSUER,
        "audiences": [DEFAULT_AUDIENCE],
        "algorithms": ["HS256"],
        "hmacSecret": {"file": path},
    }]}}));
    assert!(Authenticator::try_from(&config).is_ok());
    let both = parse(json!({"jwt": {"issuers": [{
        "issuer": DEFAULT_ISSUER, "audiences": ["a"], "algorithms": ["HS256"],
        "hmacSecret": {"base64": secret, "file": path},
    }]}}));
    assert_eq!(
        Authenticator::try_from(&both).unwrap_err().field(),
        "jwt.issuers[0].hmacSecret"
    );
}

#[tokio::test]
async fn oidc_discovery_over_https_end_to_end() {
    let pki = TestPki::generate().unwrap();
    let server = DocumentServer::start(Some(pki.server())).await.unwrap();
    let issuer = server.url("/realms/ml");
    server.serve(
        "/realms/ml/.well-known/openid-configuration",
        json!({"issuer": issuer, "jwks_uri": server.url("/realms/ml/certs")}).to_string(),
        None,
    );
    server.serve("/realms/ml/certs", keys().jwks_json().unwrap(), Some(600));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.root().cert_pem()).unwrap();
    let auth = Authenticator::try_from(parse(json!({"jwt": {"issuers": [{
        "issuer": issuer,
        "audiences": [DEFAULT_AUDIENCE],
        "jwks": {"discovery": true, "caFile": ca},
    }]}})))
    .unwrap();
    let token = keys()
        .ed25519()
        .token()
        .issuer(&issuer)
        .subject("bob")
        .sign()
        .unwrap();
    let req = bearer(&token);
    let p = auth
        .authenticate(req.headers(), req.extensions())
        .await
        .unwrap();
    assert_eq!(p.subject(), "bob");
    assert_eq!(server.hits(), 2, "discovery document, then the key set");
    let status = auth.key_sets()[0].status();
    assert_eq!(status.keys, 4);
    assert_eq!(status.fetches, 1);
}
