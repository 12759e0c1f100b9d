//! WAF hot paths: ai-guard on chat requests, the leak guard over benign text.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_waf::{LeakGuard, LeakGuardConfig, Waf, WafConfig};

const PROSE: &str = "The committee reviewed the quarterly figures and agreed that the new scheduling system had reduced waiting times at both clinics. Staff asked for clearer guidance on holiday cover, and the chair promised a short note before the next meeting. ";

fn chat_body(size: usize) -> Vec<u8> {
    let mut text = String::new();
    while text.len() < size.saturating_sub(120) {
        text.push_str(PROSE);
    }
    text.truncate(size.saturating_sub(120));
    serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}]})
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let waf = Waf::try_from(WafConfig {
        packs: vec!["ai-guard".into()],
        ..WafConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (parts, ()) = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(())
        .unwrap_or_else(|e| panic!("{e}"))
        .into_parts();
    for (name, size) in [
        ("ai_guard/chat_1k", 1024),
        ("ai_guard/chat_100k", 100 * 1024),
    ] {
        let body = chat_body(size);
        assert!(waf.inspect_request(&parts, &body).allowed());
        c.bench_function(name, |b| {
            b.iter(|| black_box(waf.inspect_request(&parts, black_box(&body))))
        });
    }
    let guard =
        Arc::new(LeakGuard::new(&LeakGuardConfig::default()).unwrap_or_else(|e| panic!("{e}")));
    let text = PROSE.repeat(64 * 1024 / PROSE.len());
    assert!(guard.scan(text.as_bytes()).is_empty());
    let mut group = c.benchmark_group("leak_guard");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("scan_benign_64k", |b| {
        b.iter(|| black_box(guard.scan(black_box(text.as_bytes()))))
    });
    group.bench_function("stream_benign_64k_in_1k_chunks", |b| {
        b.iter(|| {
            let mut s = guard.stream();
            let mut n = 0;
            for chunk in text.as_bytes().chunks(1024) {
                n += s.push(chunk).emit.len();
            }
            n + s.finish().emit.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
