//! Protecting an axum route with JWTs verified against a JWKS.
//!
//! ```sh
//! cargo run --example axum_jwt                  # serve on 127.0.0.1:3000, print a token to try
//! cargo run --example axum_jwt -- --self-check  # send the requests in-process and exit
//! ```
//!
//! The example plays the identity provider too: it generates a signing key, writes its JWKS
//! to a file, and mints a token. In production the JWKS comes from your provider, usually by
//! OIDC discovery (`jwks: { discovery: true }`).

use axum::extract::Extension;
use axum::routing::post;
use axum::{Json, Router};
use http::{Request, StatusCode};
use portcullis::authn::{AuthnConfig, AuthnLayer};
use portcullis::core::Principal;
use portcullis_test_util::JwtKeys;
use portcullis_test_util::jwt::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use serde_json::{Value, json};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The protected handler: the layer has already authenticated the caller.
async fn chat(Extension(principal): Extension<Principal>, Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "caller": principal.subject(),
        "tenant": principal.tenant(),
        "model": body.get("model"),
    }))
}

fn app(jwks_file: &std::path::Path) -> Result<Router, Error> {
    let config: AuthnConfig = serde_json::from_value(json!({
        "realm": "models",
        "stripCredentials": true,
        "jwt": {"issuers": [{
            "issuer": DEFAULT_ISSUER,
            "audiences": [DEFAULT_AUDIENCE],
            "algorithms": ["ES256"],
            "jwks": {"file": jwks_file},
            "claims": {"tenant": "tid"},
        }]},
        "authorization": {"scopes": {"all": ["chat:write"]}},
    }))?;
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat))
        .layer(AuthnLayer::try_from(config)?))
}

fn chat_request(token: Option<&str>) -> Result<Request<axum::body::Body>, Error> {
    let mut builder =
        Request::post("/v1/chat/completions").header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    Ok(builder.body(axum::body::Body::from(r#"{"model":"llama-3.1-8b"}"#))?)
}

async fn self_check(app: Router, token: &str, weak: &str) -> Result<(), Error> {
    for (what, req, want) in [
        ("no token", chat_request(None)?, StatusCode::UNAUTHORIZED),
        (
            "token without chat:write",
            chat_request(Some(weak))?,
            StatusCode::FORBIDDEN,
        ),
        ("valid token", chat_request(Some(token))?, StatusCode::OK),
    ] {
        let response = app.clone().oneshot(req).await?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
        println!("{what:>26} -> {status} {}", String::from_utf8_lossy(&body));
        if status != want {
            return Err(format!("{what}: expected {want}, got {status}").into());
        }
    }
    println!("self-check passed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let keys = JwtKeys::generate()?;
    let dir = tempfile::tempdir()?;
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, keys.jwks_json()?)?;
    let token = keys
        .es256()
        .token()
        .subject("alice")
        .claim("tid", json!("acme"))
        .claim("scope", json!("chat:write"))
        .sign()?;
    let weak = keys.es256().token().subject("bob").sign()?;
    let app = app(&jwks_file)?;

    if std::env::args().any(|a| a == "--self-check") {
        return self_check(app, &token, &weak).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!(
        "try: curl -s localhost:3000/v1/chat/completions -H 'content-type: application/json' \\"
    );
    println!("       -H 'authorization: Bearer {token}' -d '{{\"model\":\"m\"}}'");
    axum::serve(listener, app).await?;
    Ok(())
}
