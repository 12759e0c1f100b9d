//! The requests of the CRS benchmarks, shared by `benches/crs.rs` and the side-by-side bench
//! in `benches/crs-compare` at the repository root: a GET with five query arguments, a 1 KB
//! JSON chat-completion POST, a 10 KB form POST, all with a browser's headers.

/// One request, as text.
pub struct Req {
    /// The bench's name for it.
    pub name: &'static str,
    /// The method.
    pub method: &'static str,
    /// The request target.
    pub target: String,
    /// The headers, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const PROSE: &str = "The committee reviewed the quarterly figures and agreed that the new scheduling system had reduced waiting times at both clinics. Staff asked for clearer guidance on holiday cover, and the chair promised a short note before the next meeting. ";

fn browser() -> Vec<(&'static str, String)> {
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
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The three requests.
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
        h.push(("Content-Type", ct.to_owned()));
        h.push(("Content-Length", len.to_string()));
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
