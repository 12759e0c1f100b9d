//! The OWASP CRS (from the shared data beside the repository) at its default set-up:
//! paranoia level 1, blocking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::LazyLock;

use portcullis_waf::crs::Crs;
use portcullis_waf::{Exchange, ParseOptions};

static CRS: LazyLock<Crs> = LazyLock::new(|| {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    Crs::load_dir(&dir, "", "").unwrap_or_else(|e| panic!("{e}"))
});

fn post_json(body: &str) -> Exchange {
    let (parts, ()) = http::Request::post("/v1/chat/completions")
        .header("host", "api.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body(())
        .unwrap()
        .into_parts();
    Exchange::from_request(&parts, body.as_bytes(), ParseOptions::default())
}

fn get(uri: &str) -> http::request::Parts {
    http::Request::get(uri)
        .header("host", "api.example.com")
        .header("user-agent", "Mozilla/5.0")
        .header("accept", "*/*")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

const PROSE: &str = "Hi! I'm planning a trip to Lisbon with my parents next spring, and we'd like \
to select a hotel near the river. My dad says we shouldn't book anything over 150 euros a night, \
or we'll run out of money before the end of the week -- he's probably right. Could you compare \
two or three neighbourhoods for us? We don't drive, so being close to a tram or metro line \
matters; my mum's knees aren't great, so fewer hills would be better. Also, what's the union of \
the places you'd recommend for food and for music? We love fado, grilled sardines and custard \
tarts, and we'd happily walk 20 minutes for a good dinner. My sister might join us for the \
last two days, so a flat with a sofa bed could work too, if it's not much more expensive. Please keep it short and include one \
or two backup options in case the first choice is full. Thanks a lot for your help, it's very much \
appreciated!";

#[test]
fn a_chat_request_of_ordinary_prose_passes_at_paranoia_level_1() {
    let body = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a helpful travel assistant."},
        {"role": "user", "content": PROSE}]})
    .to_string();
    assert!(body.len() > 1000, "{}", body.len());
    let outcome = CRS.evaluate_request(&post_json(&body), "203.0.113.9");
    let fired: Vec<u32> = outcome
        .matches
        .iter()
        .filter(|m| m.logged)
        .map(|m| m.id)
        .collect();
    assert_eq!(outcome.status, None, "blocked; rules {fired:?}");
    assert!(fired.is_empty(), "{fired:?}");
}

#[test]
fn classic_attacks_are_blocked_at_paranoia_level_1() {
    for (uri, rule) in [
        ("/search?q=1%27%20OR%20%271%27%3D%271", 942100),
        ("/page?name=%3Cscript%3Ealert(1)%3C%2Fscript%3E", 941100),
        ("/download?file=..%2F..%2F..%2Fetc%2Fpasswd", 930100),
        ("/run?cmd=%3Bcat%20%2Fetc%2Fpasswd", 932160),
    ] {
        let ex = Exchange::from_request(&get(uri), b"", ParseOptions::default());
        let outcome = CRS.evaluate_request(&ex, "203.0.113.9");
        let fired: Vec<u32> = outcome.matches.iter().map(|m| m.id).collect();
        assert_eq!(outcome.status, Some(403), "{uri}: {fired:?}");
        assert!(fired.contains(&rule), "{uri}: {fired:?}");
        assert!(fired.contains(&949110), "{uri}: {fired:?}");
    }
}

#[test]
fn the_waf_runs_crs_beside_the_packs() {
    use portcullis_waf::{CrsConfig, Mode, Waf, WafConfig};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let config = |mode| WafConfig {
        mode,
        packs: vec!["ai-guard".into()],
        crs: Some(CrsConfig::new(&dir)),
        ..WafConfig::default()
    };
    let waf = Waf::try_from(config(Mode::Blocking)).unwrap();
    let parts = get("/search?q=1%27%20OR%20%271%27%3D%271");
    let inspection = waf.inspect_request(&parts, b"");
    assert!(!inspection.allowed());
    assert!(inspection.verdict.matched_rules().contains(&942100));
    assert!(inspection.verdict.incident().is_some());
    // Detection only: recorded, not blocked.
    let detect = Waf::try_from(config(Mode::DetectionOnly)).unwrap();
    let inspection = detect.inspect_request(&parts, b"");
    assert!(inspection.allowed());
    assert!(inspection.verdict.matched_rules().contains(&942100));
    // Benign chat passes both the pack and CRS.
    let body = serde_json::json!({"messages": [{"role": "user", "content": PROSE}]}).to_string();
    let (chat, ()) = http::Request::post("/v1/chat/completions")
        .header("host", "api.example.com")
        .header("user-agent", "Mozilla/5.0")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let inspection = waf.inspect_request(&chat, body.as_bytes());
    assert!(inspection.allowed(), "{:?}", inspection.verdict);
    // A directory that is not a CRS is a configuration error naming the field.
    let err = Waf::try_from(WafConfig {
        crs: Some(CrsConfig::new(dir.join("nope"))),
        ..WafConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("crs"), "{err}");
}

/// A response body in frames.
struct Chunks(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Through `WafLayer`, with CRS's response phases: a reply with `content_type` and `chunks`.
async fn respond(
    mode: portcullis_waf::Mode,
    limit: usize,
    content_type: &'static str,
    chunks: Vec<&'static [u8]>,
) -> (http::StatusCode, Vec<u8>, portcullis_core::WafVerdict) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use portcullis_waf::{CrsConfig, WafConfig, WafLayer};
    use tower::{ServiceBuilder, ServiceExt};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let mut crs = CrsConfig::new(&dir);
    crs.response_body_limit = limit;
    let layer = WafLayer::try_from(WafConfig {
        mode,
        crs: Some(crs),
        ..WafConfig::default()
    })
    .unwrap();
    let service = ServiceBuilder::new().layer(layer).service_fn(
        move |_req: http::Request<portcullis_waf::RequestBody<Full<Bytes>>>| {
            let chunks = chunks.clone();
            async move {
                let body = Chunks(chunks.into_iter().map(Bytes::from_static).collect());
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", content_type)
                        .body(body)
                        .unwrap(),
                )
            }
        },
    );
    let request = http::Request::get("/report?id=7")
        .header("host", "app.example.com")
        .header("user-agent", "Mozilla/5.0")
        .header("accept", "text/html")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let shared = response
        .extensions()
        .get::<portcullis_core::SharedVerdict>()
        .cloned();
    let verdict = response
        .extensions()
        .get::<portcullis_core::WafVerdict>()
        .cloned()
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        body.to_vec(),
        shared.map_or(verdict, |s| s.snapshot()),
    )
}

const SQL_ERROR: &str = "<p>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near ''' at line 1</p>";

#[tokio::test]
async fn response_phases_withhold_a_leaking_response() {
    use portcullis_waf::Mode;
    // The MySQL error (951230), split across frames, in an HTML page: withheld with a 502
    // problem that does not repeat it.
    let (status, body, verdict) = respond(
        Mode::Blocking,
        512 * 1024,
        "text/html; charset=utf-8",
        vec![b"<html><body>", SQL_ERROR.as_bytes(), b"</body></html>"],
    )
    .await;
    assert_eq!(status, http::StatusCode::BAD_GATEWAY);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("waf.response_blocked"), "{text}");
    assert!(!text.contains("SQL syntax"), "{text}");
    assert!(verdict.matched_rules().contains(&951230), "{verdict:?}");
    assert!(verdict.incident().is_some());
    // Detection only: recorded, passed through whole.
    let (status, body, verdict) = respond(
        Mode::DetectionOnly,
        512 * 1024,
        "text/html",
        vec![b"<html><body>", SQL_ERROR.as_bytes(), b"</body></html>"],
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(String::from_utf8(body).unwrap().contains("SQL syntax"));
    assert!(verdict.matched_rules().contains(&951230), "{verdict:?}");
    // An ordinary page goes through unchanged, and so do types CRS does not read and event
    // streams (never held back).
    let page = "<html><body><p>Quarterly report: all figures in order.</p></body></html>";
    let (status, body, verdict) = respond(
        Mode::Blocking,
        512 * 1024,
        "text/html",
        vec![page.as_bytes()],
    )
    .await;
    assert_eq!(
        (status, body),
        (http::StatusCode::OK, page.as_bytes().to_vec())
    );
    assert!(verdict.matched_rules().is_empty(), "{verdict:?}");
    for ct in ["text/event-stream", "application/octet-stream"] {
        let (status, body, _) =
            respond(Mode::Blocking, 512 * 1024, ct, vec![SQL_ERROR.as_bytes()]).await;
        assert_eq!(
            (status, body),
            (http::StatusCode::OK, SQL_ERROR.as_bytes().to_vec())
        );
    }
    // Past the limit, the inspected part decides and the rest flows on, whole.
    let (status, body, _) = respond(
        Mode::Blocking,
        16,
        "text/html",
        vec![
            b"<html><body>",
            b"....",
            SQL_ERROR.as_bytes(),
            b"</body></html>",
        ],
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(
        body,
        format!("<html><body>....{SQL_ERROR}</body></html>").into_bytes()
    );
}
