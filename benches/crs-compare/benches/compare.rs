//! The OWASP CRS (paranoia level 1, blocking) on portcullis-waf and on zentinel-modsec, the
//! same three requests, one run.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_crs_compare::{crs_dir, portcullis, requests, zentinel, zentinel_engine};
use portcullis_waf::crs::Crs;

fn bench(c: &mut Criterion) {
    let dir = crs_dir();
    let crs = Crs::load_dir(&dir, "", "").unwrap_or_else(|e| panic!("{e}"));
    // Without the cache of header verdicts (which the other engine does not have).
    let mut cold = crs.clone();
    cold.set_value_cache(0);
    let modsec = zentinel_engine(&dir);
    for req in requests() {
        // Both let the benign requests through.
        println!(
            "{}: portcullis {:?}, zentinel-modsec {:?}",
            req.name,
            portcullis(&crs, &req),
            zentinel(&modsec, &req)
        );
        c.bench_function(&format!("portcullis/{}", req.name), |b| {
            b.iter(|| black_box(portcullis(&crs, black_box(&req))))
        });
        c.bench_function(&format!("portcullis-no-value-cache/{}", req.name), |b| {
            b.iter(|| black_box(portcullis(&cold, black_box(&req))))
        });
        c.bench_function(&format!("zentinel-modsec/{}", req.name), |b| {
            b.iter(|| black_box(zentinel(&modsec, black_box(&req))))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
