//! The OWASP CRS at paranoia level 1 (blocking, its default set-up) on three requests.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/crs_requests.rs"]
#[allow(unreachable_pub)] // shared with the side-by-side bench, which re-exports it
mod crs_requests;

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_waf::crs::Crs;
use portcullis_waf::{Exchange, ParseOptions};

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let crs = Crs::load_dir(&dir, "", "").unwrap_or_else(|e| panic!("{e}"));
    // The same rule set without the cache of header verdicts: every value searched anew, as
    // for a client never seen before.
    let mut cold = crs.clone();
    cold.set_value_cache(0);
    for req in crs_requests::requests() {
        let mut builder = http::Request::builder().method(req.method).uri(&req.target);
        for (k, v) in &req.headers {
            builder = builder.header(*k, v);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let body = req.body;
        let name = format!("crs_pl1/{}", req.name);
        let ex = Exchange::from_request(&parts, &body, ParseOptions::default());
        let outcome = crs.evaluate_request(&ex, "203.0.113.9");
        assert_eq!(outcome.status, None, "{name}: {:?}", outcome.matches);
        c.bench_function(&name, |b| {
            b.iter(|| {
                let ex = Exchange::from_request(&parts, black_box(&body), ParseOptions::default());
                black_box(crs.evaluate_request(&ex, "203.0.113.9"))
            })
        });
        c.bench_function(&format!("crs_pl1_no_value_cache/{}", req.name), |b| {
            b.iter(|| {
                let ex = Exchange::from_request(&parts, black_box(&body), ParseOptions::default());
                black_box(cold.evaluate_request(&ex, "203.0.113.9"))
            })
        });
    }
    c.bench_function("crs/load", |b| {
        b.iter(|| black_box(Crs::load_dir(&dir, "", "").unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
