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
        crs: Some(CrsConfig {
            dir: dir.clone(),
            exclusions: Vec::new(),
        }),
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
        crs: Some(CrsConfig {
            dir: dir.join("nope"),
            exclusions: Vec::new(),
        }),
        ..WafConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("crs"), "{err}");
}
