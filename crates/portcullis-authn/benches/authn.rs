//! JWT verification through the whole `AuthnLayer`, per algorithm, uncached and as a cache
//! hit, next to `jsonwebtoken::decode` on the same tokens, in the same run.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a bench with broken fixtures should stop at once"
)]

use std::convert::Infallible;
use std::future::Future as _;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use jsonwebtoken::{DecodingKey, Validation};
use portcullis_authn::{Algorithm, Authenticator, AuthnLayer, IssuerBuilder, Jwks, KeySet};
use portcullis_test_util::JwtKeys;
use portcullis_test_util::jwt::{DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwtKey};
use serde_json::{Value, json};
use tower::{Layer, Service, service_fn};

fn authenticator(keys: &JwtKeys, cached: bool) -> Authenticator {
    let mut doc: Value = serde_json::from_str(&keys.jwks_json().expect("jwks")).expect("json");
    if let Some(rsa) = doc["keys"][0].as_object_mut() {
        rsa.remove("alg");
    }
    let jwks = Arc::new(Jwks::fixed(
        KeySet::from_jwks_json(doc.to_string().as_bytes()).expect("keys"),
    ));
    let issuer = IssuerBuilder::new(DEFAULT_ISSUER, jwks)
        .audience(DEFAULT_AUDIENCE)
        .algorithms(
            portcullis_authn::ASYMMETRIC_ALGORITHMS
                .into_iter()
                .chain([Algorithm::HS256]),
        )
        .hmac_secret(keys.hmac_secret());
    let builder = Authenticator::builder().issuer(issuer);
    let builder = if cached {
        builder
    } else {
        builder.no_token_cache()
    };
    builder.build().expect("authenticator")
}

/// A realistic access token: ~800 bytes of claims.
fn token(key: Option<&JwtKey>, keys: &JwtKeys, alg: Algorithm) -> String {
    let builder = match key {
        Some(key) => key.token().alg(alg),
        None => keys.hs256_token(),
    };
    builder
        .subject("user-1234567890")
        .claim("scope", json!("chat:write models:read embeddings:write"))
        .claim("tid", json!("7f3c1e9a-0b1d-4c5e-8f2a-6d4b3c2a1e0f"))
        .claim("email", json!("someone@example.org"))
        .claim("roles", json!(["engineer", "ml-platform"]))
        .sign()
        .expect("token")
}

/// Calls a service whose futures complete at once (true of the layer over `service_fn` when
/// no key fetch is needed), without an async runtime in the measurement.
fn call_now<S>(svc: &mut S, req: Request<()>) -> Response<Bytes>
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        _ => panic!("the layer should not wait here"),
    }
}

fn request(token: &str) -> Request<()> {
    Request::get("/v1/chat/completions")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request")
}

fn bench(c: &mut Criterion) {
    let keys = JwtKeys::shared().expect("keys");
    let upstream = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    });
    let mut uncached = AuthnLayer::new(authenticator(keys, false)).layer(upstream);
    let mut cached = AuthnLayer::new(authenticator(keys, true)).layer(upstream);

    let cases: [(&str, Option<&JwtKey>, Algorithm); 6] = [
        ("RS256", Some(keys.rsa()), Algorithm::RS256),
        ("PS256", Some(keys.rsa()), Algorithm::PS256),
        ("ES256", Some(keys.es256()), Algorithm::ES256),
        ("ES384", Some(keys.es384()), Algorithm::ES384),
        ("EdDSA", Some(keys.ed25519()), Algorithm::EdDSA),
        ("HS256", None, Algorithm::HS256),
    ];
    for (name, key, alg) in cases {
        let token = token(key, keys, alg);
        let decoding = match key {
            Some(key) => DecodingKey::from_jwk(key.jwk()).expect("decoding key"),
            None => DecodingKey::from_secret(keys.hmac_secret()),
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[DEFAULT_AUDIENCE]);
        validation.set_issuer(&[DEFAULT_ISSUER]);
        assert_eq!(
            call_now(&mut uncached, request(&token)).status(),
            200,
            "{name}"
        );
        assert_eq!(
            call_now(&mut cached, request(&token)).status(),
            200,
            "{name}"
        );

        let mut g = c.benchmark_group(format!("jwt/{name}"));
        g.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Value>(black_box(&token), &decoding, &validation)
                    .expect("valid")
            })
        });
        g.bench_function("layer_uncached", |b| {
            b.iter_batched(
                || request(&token),
                |req| call_now(&mut uncached, req),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("layer_cache_hit", |b| {
            b.iter_batched(
                || request(&token),
                |req| call_now(&mut cached, req),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
