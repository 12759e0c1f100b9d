//! The OWASP CRS at paranoia level 1 (blocking, its default set-up) on three requests.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_waf::crs::Crs;
use portcullis_waf::{Exchange, ParseOptions};

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const PROSE: &str = "The committee reviewed the quarterly figures and agreed that the new scheduling system had reduced waiting times at both clinics. Staff asked for clearer guidance on holiday cover, and the chair promised a short note before the next meeting. ";

fn browser(b: http::request::Builder) -> http::request::Builder {
    b.header("host", "shop.example.com")
        .header("user-agent", UA)
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        )
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br")
        .header("referer", "https://shop.example.com/catalogue?page=2")
        .header("cookie", "session=3f9a2c7e81b04d6a; theme=dark; consent=1")
        .header("connection", "keep-alive")
}

/// The three requests: a GET with five query arguments, a 1 KB chat-completion POST, a
/// 10 KB form POST.
pub fn requests() -> Vec<(&'static str, http::request::Parts, Vec<u8>)> {
    let (get, ()) = browser(http::Request::get(
        "/products/search?q=blue+running+shoes&size=42&sort=price_asc&page=3&in_stock=true",
    ))
    .body(())
    .unwrap()
    .into_parts();
    let mut text = String::new();
    while text.len() < 880 {
        text.push_str(PROSE);
    }
    text.truncate(880);
    let chat = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}]})
    .to_string()
    .into_bytes();
    let (post, ()) = browser(http::Request::post("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("content-length", chat.len().to_string())
        .body(())
        .unwrap()
        .into_parts();
    let mut form = String::new();
    let mut i = 0;
    while form.len() < 10 * 1024 {
        let words: String = PROSE
            .split(' ')
            .skip(i % 20)
            .take(12)
            .collect::<Vec<_>>()
            .join("+");
        form.push_str(&format!("field_{i}={words}&"));
        i += 1;
    }
    form.pop();
    let (form_parts, ()) = browser(http::Request::post("/account/profile"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", form.len().to_string())
        .body(())
        .unwrap()
        .into_parts();
    vec![
        ("crs_pl1/get_5_args", get, Vec::new()),
        ("crs_pl1/chat_json_1k", post, chat),
        ("crs_pl1/form_10k", form_parts, form.into_bytes()),
    ]
}

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let crs = Crs::load_dir(&dir, "", "").unwrap_or_else(|e| panic!("{e}"));
    for (name, parts, body) in requests() {
        let ex = Exchange::from_request(&parts, &body, ParseOptions::default());
        let outcome = crs.evaluate_request(&ex, "203.0.113.9");
        assert_eq!(outcome.status, None, "{name}: {:?}", outcome.matches);
        c.bench_function(name, |b| {
            b.iter(|| {
                let ex = Exchange::from_request(&parts, black_box(&body), ParseOptions::default());
                black_box(crs.evaluate_request(&ex, "203.0.113.9"))
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
