//! Hot paths of `portcullis-core`: client-address resolution (every request), problem
//! responses (every rejection), SPIFFE ID parsing (every mTLS connection).

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Response};
use portcullis::core::{ForwardedHeader, IpCidr, Problem, Reason, SpiffeId, TrustedProxies};

fn proxies() -> TrustedProxies {
    let nets: Vec<IpCidr> = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    TrustedProxies::new(nets)
}

fn headers(name: &'static str, value: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(value) {
        map.insert(name, v);
    }
    map
}

fn client_addr(c: &mut Criterion) {
    let peer: SocketAddr = SocketAddr::from(([10, 0, 0, 2], 40000));
    let direct = SocketAddr::from(([203, 0, 113, 9], 40000));
    let none = TrustedProxies::none();
    let trusted = proxies();
    let forwarded = proxies().with_header(ForwardedHeader::Forwarded);
    let xff = headers(
        "x-forwarded-for",
        "6.6.6.6, 203.0.113.7, 10.1.1.1, 192.168.3.3",
    );
    let fwd = headers(
        "forwarded",
        "for=6.6.6.6, for=203.0.113.7;proto=https, for=10.1.1.1, for=\"[fd00::3]:443\"",
    );
    let mut abusive = String::from("203.0.113.7");
    for i in 0..2_000 {
        abusive.push_str(&format!(", 10.9.{}.{}", i / 250, i % 250 + 1));
    }
    let abusive = headers("x-forwarded-for", &abusive);

    let mut g = c.benchmark_group("client_addr");
    g.bench_function("no_trusted_proxies", |b| {
        b.iter(|| none.resolve(black_box(peer), black_box(&xff)))
    });
    g.bench_function("untrusted_peer", |b| {
        b.iter(|| trusted.resolve(black_box(direct), black_box(&xff)))
    });
    g.bench_function("xff_3_hops", |b| {
        b.iter(|| trusted.resolve(black_box(peer), black_box(&xff)))
    });
    g.bench_function("forwarded_3_hops", |b| {
        b.iter(|| forwarded.resolve(black_box(peer), black_box(&fwd)))
    });
    g.bench_function("xff_2000_entries", |b| {
        b.iter(|| trusted.resolve(black_box(peer), black_box(&abusive)))
    });
    g.finish();
}

fn problem(c: &mut Criterion) {
    c.bench_function("problem/into_response", |b| {
        b.iter(|| {
            let response: Response<Bytes> = Problem::new(black_box(Reason::RateLimited))
                .retry_after(std::time::Duration::from_secs(3))
                .into_response();
            response
        })
    });
}

fn spiffe(c: &mut Criterion) {
    c.bench_function("spiffe_id/parse", |b| {
        b.iter(|| SpiffeId::parse(black_box("spiffe://prod.example.org/ns/ml/sa/inference")))
    });
}

criterion_group!(benches, client_addr, problem, spiffe);
criterion_main!(benches);
