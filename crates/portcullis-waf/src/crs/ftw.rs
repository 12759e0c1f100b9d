//! Runs the CRS regression tests (go-ftw YAML) in-process: each case's request is built the
//! way go-ftw builds it, run through the rule set with no sockets, and the fired rule ids are
//! compared with `expect_ids` / `no_expect_ids` (and `status` where given).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Crs;
use crate::request::{Exchange, ParseOptions, RequestHead};

/// The set-up CRS's own test suite asks for: detection only, every paranoia level, the
/// limits the tests were written against.
pub const TEST_SETUP: &str = r#"
SecDefaultAction "phase:3,log,auditlog,pass"
SecDefaultAction "phase:4,log,auditlog,pass"
SecAction "id:900005,phase:1,nolog,pass,ctl:ruleEngine=DetectionOnly,ctl:ruleRemoveById=910000,setvar:tx.blocking_paranoia_level=4,setvar:tx.crs_validate_utf8_encoding=1,setvar:tx.arg_name_length=100,setvar:tx.arg_length=400,setvar:tx.total_arg_length=64000,setvar:tx.max_num_args=255,setvar:tx.max_file_size=64100,setvar:tx.combined_file_sizes=65535"
"#;

#[derive(Debug, Deserialize)]
struct TestFile {
    #[serde(default)]
    rule_id: Option<u32>,
    #[serde(default)]
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    test_id: u32,
    #[serde(default)]
    rule_id: Option<u32>,
    #[serde(default)]
    stages: Vec<Stage>,
}

#[derive(Debug, Deserialize)]
struct Stage {
    #[serde(default)]
    input: Input,
    #[serde(default)]
    output: Output,
}

/// A YAML scalar, as go-ftw accepts numbers and booleans where it means text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    method: Option<Scalar>,
    #[serde(default)]
    uri: Option<Scalar>,
    #[serde(default)]
    version: Option<Scalar>,
    #[serde(default)]
    headers: BTreeMap<String, Scalar>,
    #[serde(default)]
    data: Option<Scalar>,
    #[serde(default)]
    encoded_request: Option<String>,
    #[serde(default)]
    autocomplete_headers: Option<bool>,
    #[serde(default)]
    stop_magic: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct Output {
    #[serde(default)]
    status: Option<StatusSpec>,
    #[serde(default)]
    log: Log,
    #[serde(default)]
    expect_error: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    One(u16),
    Any(Vec<u16>),
}

#[derive(Debug, Default, Deserialize)]
struct Log {
    #[serde(default)]
    expect_ids: Vec<u32>,
    #[serde(default)]
    no_expect_ids: Vec<u32>,
    #[serde(default)]
    match_regex: Option<String>,
    #[serde(default)]
    no_match_regex: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Overrides {
    #[serde(default)]
    test_overrides: Vec<Override>,
}

#[derive(Debug, Deserialize)]
struct Override {
    rule_id: u32,
    #[serde(default)]
    test_ids: Vec<u32>,
    #[serde(default)]
    reason: String,
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The log and status are as expected.
    Passed,
    /// Not as expected: why.
    Failed(String),
    /// Not run: why (an override, or a request this runner cannot build).
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The test file (its name without `.yaml`).
    pub file: String,
    /// The rule the file tests.
    pub rule_id: u32,
    /// The case id within the file.
    pub test_id: u32,
    /// The result.
    pub verdict: Verdict,
    /// Whether the case has `no_expect_ids`.
    pub has_no_expect: bool,
}

/// Runs every test file under `tests_dir` whose name matches `include` (all when `None`).
///
/// # Errors
///
/// A test directory that cannot be read.
pub fn run(
    crs: &Crs,
    tests_dir: &Path,
    include: Option<&regex_automata::meta::Regex>,
    overrides: Option<&Path>,
) -> Result<Vec<CaseResult>, String> {
    let mut skip: HashMap<(u32, u32), String> = HashMap::new();
    if let Some(path) = overrides.filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed: Overrides =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for o in parsed.test_overrides {
            for t in o.test_ids {
                skip.insert((o.rule_id, t), o.reason.clone());
            }
        }
    }
    let mut files = Vec::new();
    collect(tests_dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if include.is_some_and(|re| !re.is_match(name.as_bytes())) {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: TestFile = match serde_saphyr::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                out.push(CaseResult {
                    file: name.clone(),
                    rule_id: 0,
                    test_id: 0,
                    verdict: Verdict::Skipped(format!("the test file does not parse: {e}")),
                    has_no_expect: false,
                });
                continue;
            }
        };
        let file_rule = file.rule_id.or_else(|| name.parse().ok()).unwrap_or(0);
        for case in file.tests {
            let rule_id = case.rule_id.unwrap_or(file_rule);
            let has_no_expect = case
                .stages
                .iter()
                .any(|s| !s.output.log.no_expect_ids.is_empty());
            let verdict = match skip.get(&(rule_id, case.test_id)) {
                Some(reason) => Verdict::Skipped(format!("override: {reason}")),
                None => run_case(crs, &case),
            };
            out.push(CaseResult {
                file: name.clone(),
                rule_id,
                test_id: case.test_id,
                verdict,
                has_no_expect,
            });
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn run_case(crs: &Crs, case: &Case) -> Verdict {
    for (n, stage) in case.stages.iter().enumerate() {
        let request = match build(&stage.input) {
            Ok(r) => r,
            Err(why) => return Verdict::Skipped(why),
        };
        let headers: Vec<(&str, &[u8])> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let head = RequestHead {
            method: &request.method,
            target: &request.target,
            protocol: &request.version,
            headers: &headers,
        };
        let body = request.body;
        let mut ex = Exchange::from_head(&head, &body, ParseOptions::default());
        // The CRS test backend answers `/reflect` with the status, headers and body the
        // request describes; every other path with a plain 200.
        let path = request.target.split('?').next().unwrap_or_default();
        let (status, headers, content) = if path == "/reflect" {
            reflect(&body)
        } else {
            (http::StatusCode::OK, http::HeaderMap::new(), Vec::new())
        };
        ex.set_response(status, &headers, &content);
        let outcome = crs.evaluate_exchange(&ex, "127.0.0.1");
        let logged: Vec<u32> = outcome
            .matches
            .iter()
            .filter(|m| m.logged)
            .map(|m| m.id)
            .collect();
        let log = &stage.output.log;
        let missing: Vec<u32> = log
            .expect_ids
            .iter()
            .copied()
            .filter(|id| !logged.contains(id))
            .collect();
        let unwanted: Vec<u32> = log
            .no_expect_ids
            .iter()
            .copied()
            .filter(|id| logged.contains(id))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("expected {missing:?} not logged"));
        }
        if !unwanted.is_empty() {
            problems.push(format!("unexpected {unwanted:?} logged"));
        }
        let text: String = outcome
            .matches
            .iter()
            .filter(|m| m.logged)
            .map(|m| {
                format!(
                    "[id \"{}\"] [msg \"{}\"]\n",
                    m.id,
                    m.msg.as_deref().unwrap_or("")
                )
            })
            .collect();
        for (pattern, want) in [(&log.match_regex, true), (&log.no_match_regex, false)] {
            if let Some(p) = pattern {
                match regex_automata::meta::Regex::new(p) {
                    Ok(re) if re.is_match(&text) != want => {
                        problems.push(format!(
                            "log regex `{p}` {}",
                            if want { "not found" } else { "found" }
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => return Verdict::Skipped(format!("log regex `{p}`: {e}")),
                }
            }
        }
        if let Some(spec) = &stage.output.status {
            let status = outcome.status.unwrap_or(200);
            let ok = match spec {
                StatusSpec::One(s) => *s == status,
                StatusSpec::Any(list) => list.contains(&status),
            };
            if !ok {
                problems.push(format!("status {status}, expected {spec:?}"));
            }
        }
        if stage.output.expect_error == Some(true) {
            return Verdict::Skipped("expects the server to fail the connection".into());
        }
        if !problems.is_empty() {
            return Verdict::Failed(format!("stage {}: {}", n + 1, problems.join("; ")));
        }
    }
    Verdict::Passed
}

/// The response the test backend makes of a `/reflect` request body:
/// `{"status": N, "headers": {...}, "body": "...", "encodedBody": "base64"}`.
fn reflect(body: &[u8]) -> (http::StatusCode, http::HeaderMap, Vec<u8>) {
    use base64::Engine as _;
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let status = json
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::OK);
    let mut headers = http::HeaderMap::new();
    if let Some(map) = json.get("headers").and_then(serde_json::Value::as_object) {
        for (k, v) in map {
            let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(http::HeaderValue::from_str),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
    }
    let content = match (json.get("body"), json.get("encodedBody")) {
        (Some(b), _) => b.as_str().unwrap_or_default().as_bytes().to_vec(),
        (None, Some(e)) => base64::engine::general_purpose::STANDARD
            .decode(e.as_str().unwrap_or_default())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    (status, headers, content)
}

/// Builds the request as go-ftw sends it.
fn build(input: &Input) -> Result<RawRequest, String> {
    let (method, uri, version, mut headers, mut data) = match &input.encoded_request {
        Some(encoded) => raw_request(encoded)?,
        None => (
            input.method.as_ref().map_or("GET".into(), Scalar::text),
            input.uri.as_ref().map_or("/".into(), Scalar::text),
            input
                .version
                .as_ref()
                .map_or("HTTP/1.1".into(), Scalar::text),
            input
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.text().into_bytes()))
                .collect::<Vec<_>>(),
            input
                .data
                .as_ref()
                .map(Scalar::text)
                .unwrap_or_default()
                .into_bytes(),
        ),
    };
    let autocomplete = input
        .autocomplete_headers
        .or(input.stop_magic.map(|s| !s))
        .unwrap_or(true)
        && input.encoded_request.is_none();
    let has = |headers: &[(String, Vec<u8>)], name: &str| {
        headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    if autocomplete && !data.is_empty() {
        if !has(&headers, "content-type") {
            headers.push((
                "Content-Type".into(),
                b"application/x-www-form-urlencoded".to_vec(),
            ));
        }
        let form = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v == b"application/x-www-form-urlencoded"
        });
        if form {
            data = encode_form(&data);
        }
    }
    let multipart = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type")
            && String::from_utf8_lossy(v).contains("multipart/form-data;")
    });
    if multipart && input.encoded_request.is_none() {
        let mut crlf = Vec::with_capacity(data.len());
        for &b in &data {
            if b == b'\n' {
                crlf.extend_from_slice(b"\r\n");
            } else {
                crlf.push(b);
            }
        }
        data = crlf;
    }
    if autocomplete {
        if !has(&headers, "connection") {
            headers.push(("Connection".into(), b"close".to_vec()));
        }
        let body_method = matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
        if !has(&headers, "content-length") && (!data.is_empty() || body_method) {
            headers.push(("Content-Length".into(), data.len().to_string().into_bytes()));
        }
    }
    Ok(RawRequest {
        method,
        target: uri,
        version,
        headers,
        body: data,
    })
}

/// A request as go-ftw sends it: text, unvalidated.
struct RawRequest {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

type RawParts = (String, String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// Splits a raw HTTP/1 request (`encoded_request`, base64).
fn raw_request(encoded: &str) -> Result<RawParts, String> {
    use base64::Engine as _;
    let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("`encoded_request` is not base64: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("`encoded_request` has no end of headers")?;
    let head = String::from_utf8_lossy(raw.get(..split).unwrap_or_default()).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(uri), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err(format!("the request line `{line}` cannot be represented"));
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().as_bytes().to_vec()))
        .collect();
    Ok((method.into(), uri.into(), version.into(), headers, body))
}

/// go-ftw's form encoding: when the data has no percent escapes, each key and value is
/// query-escaped (spaces become `+`).
fn encode_form(data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let has_escapes = text.contains('%') || text.contains('+');
    if has_escapes {
        return data.to_vec();
    }
    let escape = |s: &str| -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    text.split('&')
        .map(|token| match token.split_once('=') {
            Some((k, v)) => format!("{}={}", escape(k), escape(v)),
            None => escape(token),
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}
