//! The three requests of the CRS benchmark, and a runner for each engine.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use portcullis_waf::crs::Crs;
use portcullis_waf::{Exchange, ParseOptions, RequestHead};

/// One request: method, target, headers, body.
pub struct Req {
    /// The bench's name for it.
    pub name: &'static str,
    /// The method.
    pub method: &'static str,
    /// The request target.
    pub target: String,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const PROSE: &str = "The committee reviewed the quarterly figures and agreed that the new scheduling system had reduced waiting times at both clinics. Staff asked for clearer guidance on holiday cover, and the chair promised a short note before the next meeting. ";

fn browser() -> Vec<(String, String)> {
    [
        ("Host", "shop.example.com"),
        ("User-Agent", UA),
        (
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("Accept-Language", "en-GB,en;q=0.9"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Referer", "https://shop.example.com/catalogue?page=2"),
        ("Cookie", "session=3f9a2c7e81b04d6a; theme=dark; consent=1"),
        ("Connection", "keep-alive"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The requests of `portcullis-waf`'s own CRS bench: a GET with five arguments, a 1 KB JSON
/// chat-completion POST, a 10 KB form POST.
pub fn requests() -> Vec<Req> {
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
    let mut form = String::new();
    let mut i = 0;
    while form.len() < 10 * 1024 {
        let words: Vec<&str> = PROSE.split(' ').skip(i % 20).take(12).collect();
        form.push_str(&format!("field_{i}={}&", words.join("+")));
        i += 1;
    }
    form.pop();
    let with = |ct: &str, len: usize| {
        let mut h = browser();
        h.push(("Content-Type".into(), ct.into()));
        h.push(("Content-Length".into(), len.to_string()));
        h
    };
    vec![
        Req {
            name: "get_5_args",
            method: "GET",
            target:
                "/products/search?q=blue+running+shoes&size=42&sort=price_asc&page=3&in_stock=true"
                    .into(),
            headers: browser(),
            body: Vec::new(),
        },
        Req {
            name: "chat_json_1k",
            method: "POST",
            target: "/v1/chat/completions".into(),
            headers: with("application/json", chat.len()),
            body: chat,
        },
        Req {
            name: "form_10k",
            method: "POST",
            target: "/account/profile".into(),
            headers: with("application/x-www-form-urlencoded", form.len()),
            body: form.into_bytes(),
        },
    ]
}

/// Runs `req` through portcullis-waf's CRS; the status when it was blocked.
pub fn portcullis(crs: &Crs, req: &Req) -> Option<u16> {
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let head = RequestHead {
        method: req.method,
        target: &req.target,
        protocol: "HTTP/1.1",
        headers: &headers,
    };
    let ex = Exchange::from_head(&head, &req.body, ParseOptions::default());
    crs.evaluate_request(&ex, "203.0.113.9").status
}

/// Runs `req` through zentinel-modsec; the status when it intervened.
pub fn zentinel(modsec: &zentinel_modsec::ModSecurity, req: &Req) -> Option<u16> {
    let mut tx = modsec.new_transaction();
    tx.process_uri(&req.target, req.method, "HTTP/1.1").ok()?;
    for (k, v) in &req.headers {
        tx.add_request_header(k, v).ok()?;
    }
    tx.process_request_headers().ok()?;
    if !req.body.is_empty() {
        tx.append_request_body(&req.body).ok()?;
    }
    tx.process_request_body().ok()?;
    tx.intervention()
        .map(|i| i.status)
}

/// The CRS directory beside the repository.
pub fn crs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs")
}

/// zentinel-modsec loaded with the same CRS set-up: an entry file including
/// `crs-setup.conf.example` and `rules/*.conf`, engine on, request bodies on.
pub fn zentinel_engine(dir: &Path) -> zentinel_modsec::ModSecurity {
    let entry = std::env::temp_dir().join("portcullis-crs-compare.conf");
    let text = format!(
        "SecRuleEngine On\nSecRequestBodyAccess On\nInclude {}\nInclude {}/rules/*.conf\n",
        dir.join("crs-setup.conf.example").display(),
        dir.display()
    );
    std::fs::write(&entry, text).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
    zentinel_modsec::ModSecurity::from_file(entry.to_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("zentinel-modsec cannot load the CRS: {e}"))
}
