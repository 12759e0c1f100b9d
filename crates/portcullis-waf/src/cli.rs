//! `portcullis-waf`: evaluate rule packs and the leak guard against labelled corpora.
//!
//! ```text
//! portcullis-waf eval --rules PACK_OR_FILE --jsonl FILE [--as prompt|param|response]
//!                     [--json] [--by FIELD] [--list flagged|missed]
//! portcullis-waf crs-test --crs DIR [--tests DIR] [--include REGEX] [--json] [--failures]
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{LeakGuard, LeakGuardConfig, Waf, WafConfig};

const USAGE: &str = "usage: portcullis-waf eval --rules PACK_OR_FILE --jsonl FILE [--as prompt|param|response] [--json] [--by FIELD] [--list flagged|missed]

  --rules   a built-in pack (ai-guard), a rule pack file (YAML), or for --as response:
            leak-guard (every detector), leak-guard:default (the default set),
            leak-guard:secrets or leak-guard:pii (one class, every detector)
  --jsonl   rows with a `text` and a `label` field
  --as      wrap each text as a chat-completion request (prompt, the default), a query
            parameter (param) or an upstream chat-completion response (response)
  --json    end with one JSON line: {\"<label>\": {\"total\": N, \"flagged\": M}, ...}
  --by      also count per value of this field (e.g. entity, category)
  --list    print the rows that were flagged or missed, to stderr";

#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    Prompt,
    Param,
    Response,
}

struct Args {
    rules: String,
    jsonl: PathBuf,
    mode: As,
    json: bool,
    by: Option<String>,
    list: Option<bool>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("eval") => {}
        Some("-h" | "--help") | None => return Err(USAGE.to_owned()),
        Some(other) => return Err(format!("unknown command `{other}`\n{USAGE}")),
    }
    let (mut rules, mut jsonl, mut mode, mut json, mut by, mut list) =
        (None, None, As::Prompt, false, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--rules" => rules = Some(value()?),
            "--jsonl" => jsonl = Some(PathBuf::from(value()?)),
            "--as" => {
                mode = match value()?.as_str() {
                    "prompt" => As::Prompt,
                    "param" => As::Param,
                    "response" => As::Response,
                    other => return Err(format!("`--as {other}`: use prompt, param or response")),
                }
            }
            "--json" => json = true,
            "--by" => by = Some(value()?),
            "--list" => {
                list = Some(match value()?.as_str() {
                    "flagged" => true,
                    "missed" => false,
                    other => return Err(format!("`--list {other}`: use flagged or missed")),
                })
            }
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    Ok(Args {
        rules: rules.ok_or("--rules is required")?,
        jsonl: jsonl.ok_or("--jsonl is required")?,
        mode,
        json,
        by,
        list,
    })
}

enum Inspector {
    Waf(Waf),
    Leak(std::sync::Arc<LeakGuard>),
}

fn inspector(args: &Args) -> Result<Inspector, String> {
    if args.mode == As::Response {
        let mut config = LeakGuardConfig::default();
        match args.rules.as_str() {
            "leak-guard" | "leak-guard:all" => config.kinds = vec!["all".to_owned()],
            "leak-guard:default" => {}
            "leak-guard:secrets" | "leak-guard:pii" => {
                let prefix = if args.rules.ends_with("secrets") {
                    "secret."
                } else {
                    "pii."
                };
                config.kinds = LeakGuard::kinds()
                    .filter(|k| k.starts_with(prefix))
                    .map(str::to_owned)
                    .collect();
            }
            other => {
                return Err(format!(
                    "`--rules {other}`: with --as response use leak-guard[:all|default|secrets|pii]"
                ));
            }
        }
        return LeakGuard::new(&config)
            .map(|g| Inspector::Leak(std::sync::Arc::new(g)))
            .map_err(|e| e.to_string());
    }
    let mut config = WafConfig::default();
    if crate::builtin_pack(&args.rules).is_some() {
        config.packs.push(args.rules.clone());
    } else {
        config.rule_files.push(PathBuf::from(&args.rules));
    }
    Waf::try_from(config)
        .map(Inspector::Waf)
        .map_err(|e| e.to_string())
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn flagged(inspector: &Inspector, mode: As, text: &str) -> Result<(bool, Vec<String>), String> {
    match inspector {
        Inspector::Leak(guard) => {
            let body = serde_json::json!({
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            })
            .to_string();
            let mut stream = guard.stream();
            let mut out = stream.push(body.as_bytes());
            let end = stream.finish();
            out.blocked |= end.blocked;
            let kinds = stream.counts().keys().map(|k| (*k).to_owned()).collect();
            Ok((out.blocked || !stream.counts().is_empty(), kinds))
        }
        Inspector::Waf(waf) => {
            let (request, body) = match mode {
                As::Param => (
                    http::Request::get(format!("/search?q={}", percent_encode(text))).body(()),
                    Vec::new(),
                ),
                _ => (
                    http::Request::post("/v1/chat/completions")
                        .header("content-type", "application/json")
                        .body(()),
                    serde_json::json!({"model": "any", "messages": [{"role": "user", "content": text}]})
                        .to_string()
                        .into_bytes(),
                ),
            };
            let (parts, ()) = request.map_err(|e| e.to_string())?.into_parts();
            let inspection = waf.inspect_request(&parts, &body);
            let ids = inspection
                .evaluation
                .matches
                .iter()
                .map(|m| m.id.to_string())
                .collect();
            Ok((!inspection.allowed(), ids))
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Count {
    total: u64,
    flagged: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let inspector = inspector(args)?;
    let file = std::fs::File::open(&args.jsonl)
        .map_err(|e| format!("cannot open {}: {e}", args.jsonl.display()))?;
    let mut by_label: BTreeMap<String, Count> = BTreeMap::new();
    let mut by_field: BTreeMap<String, BTreeMap<String, Count>> = BTreeMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let text = row
            .get("text")
            .unwrap_or(&serde_json::Value::Null)
            .as_str()
            .ok_or_else(|| format!("line {}: no `text`", n + 1))?;
        let label = row
            .get("label")
            .unwrap_or(&serde_json::Value::Null)
            .as_str()
            .ok_or_else(|| format!("line {}: no `label`", n + 1))?
            .to_owned();
        let (hit, why) = flagged(&inspector, args.mode, text)?;
        let c = by_label.entry(label.clone()).or_default();
        c.total += 1;
        c.flagged += u64::from(hit);
        if let Some(field) = &args.by {
            let key = match row.get(field.as_str()).unwrap_or(&serde_json::Value::Null) {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let c = by_field
                .entry(key)
                .or_default()
                .entry(label.clone())
                .or_default();
            c.total += 1;
            c.flagged += u64::from(hit);
        }
        if args.list == Some(hit) {
            let snippet: String = text.chars().take(160).collect();
            eprintln!("{} [{label}] [{}] {snippet:?}", n + 1, why.join(","));
        }
    }
    let mut out = std::io::stdout().lock();
    let pct = |c: Count| {
        if c.total == 0 {
            0.0
        } else {
            c.flagged as f64 * 100.0 / c.total as f64
        }
    };
    let w = |e: std::io::Error| e.to_string();
    for (key, labels) in &by_field {
        for (label, c) in labels {
            writeln!(
                out,
                "{key:<28} {label:<16} {:>5} / {:<5} flagged ({:.1}%)",
                c.flagged,
                c.total,
                pct(*c)
            )
            .map_err(w)?;
        }
    }
    for (label, c) in &by_label {
        writeln!(
            out,
            "{label:<16} {:>5} / {:<5} flagged ({:.1}%)",
            c.flagged,
            c.total,
            pct(*c)
        )
        .map_err(w)?;
    }
    if args.json {
        let counts = |m: &BTreeMap<String, Count>| -> serde_json::Value {
            m.iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        serde_json::json!({"total": c.total, "flagged": c.flagged}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        if !by_field.is_empty() {
            let groups: serde_json::Map<_, _> = by_field
                .iter()
                .map(|(k, m)| (k.clone(), counts(m)))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({ "by": args.by, "groups": groups })
            )
            .map_err(w)?;
        }
        writeln!(out, "{}", counts(&by_label)).map_err(w)?;
    }
    Ok(())
}

const CRS_USAGE: &str =
    "usage: portcullis-waf crs-test --crs DIR [--tests DIR] [--include REGEX] [--json] [--failures]

  --crs       a CRS directory (crs-setup.conf[.example] and rules/)
  --tests     the go-ftw tests (default DIR/tests/regression/tests)
  --include   only test files whose name matches this regex
  --json      end with one JSON line of totals, per file, for paranoia-level-1 request rules
              and for cases with no_expect_ids
  --failures  print every failed or skipped case and why
  --min-*     fail (exit 1) if the pass rate of paranoia-level-1 request rules, of all request
              rules or of cases with no_expect_ids is below PCT";

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn add(&mut self, v: &crate::crs::ftw::Verdict) {
        use crate::crs::ftw::Verdict;
        match v {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed(_) => self.failed += 1,
            Verdict::Skipped(_) => self.skipped += 1,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"passed": self.passed, "failed": self.failed, "skipped": self.skipped})
    }

    fn rate(&self) -> f64 {
        let run = self.passed + self.failed;
        if run == 0 {
            0.0
        } else {
            100.0 * self.passed as f64 / run as f64
        }
    }
}

fn crs_test(mut args: impl Iterator<Item = String>) -> Result<bool, String> {
    use crate::crs::{Crs, ftw};
    let (mut crs_dir, mut tests, mut include, mut json, mut failures) =
        (None, None, None, false, false);
    let mut minimum = [0.0_f64; 3];
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--crs" => crs_dir = Some(PathBuf::from(value()?)),
            "--tests" => tests = Some(PathBuf::from(value()?)),
            "--include" => {
                let v = value()?;
                include = Some(
                    regex_automata::meta::Regex::new(&v)
                        .map_err(|e| format!("--include `{v}`: {e}"))?,
                );
            }
            "--json" => json = true,
            "--failures" => failures = true,
            "--min-pl1" | "--min-request" | "--min-no-expect" => {
                let v = value()?;
                let pct: f64 = v
                    .parse()
                    .map_err(|_| format!("`{flag} {v}`: a percentage"))?;
                let slot = match flag.as_str() {
                    "--min-pl1" => 0,
                    "--min-request" => 1,
                    _ => 2,
                };
                if let Some(m) = minimum.get_mut(slot) {
                    *m = pct;
                }
            }
            "-h" | "--help" => return Err(CRS_USAGE.to_owned()),
            other => return Err(format!("unknown option `{other}`\n{CRS_USAGE}")),
        }
    }
    let crs_dir = crs_dir.ok_or_else(|| format!("--crs is required\n{CRS_USAGE}"))?;
    let tests = tests.unwrap_or_else(|| crs_dir.join("tests/regression/tests"));
    let started = std::time::Instant::now();
    let crs = Crs::load_dir(&crs_dir, ftw::TEST_SETUP, "").map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let overrides = crs_dir.join("tests/regression/coraza-overrides.yaml");
    let results = ftw::run(&crs, &tests, include.as_ref(), Some(&overrides))?;
    let mut total = Tally::default();
    let mut pl1 = Tally::default();
    let mut requests = Tally::default();
    let mut no_expect = Tally::default();
    let mut files: BTreeMap<String, Tally> = BTreeMap::new();
    for r in &results {
        total.add(&r.verdict);
        files.entry(r.file.clone()).or_default().add(&r.verdict);
        let (level, phase) = crs.rule_level(r.rule_id).unwrap_or((None, 2));
        if phase <= 2 {
            requests.add(&r.verdict);
            if level == Some(1) {
                pl1.add(&r.verdict);
            }
        }
        if r.has_no_expect {
            no_expect.add(&r.verdict);
        }
        if failures {
            match &r.verdict {
                ftw::Verdict::Failed(why) => eprintln!("FAIL {}#{}: {why}", r.file, r.test_id),
                ftw::Verdict::Skipped(why) => eprintln!("SKIP {}#{}: {why}", r.file, r.test_id),
                ftw::Verdict::Passed => {}
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (file, t) in &files {
        let _ = writeln!(
            out,
            "{file:<12} {:>3} passed {:>3} failed {:>3} skipped ({:.1}%)",
            t.passed,
            t.failed,
            t.skipped,
            t.rate()
        );
    }
    let _ = writeln!(
        out,
        "loaded {} rules in {load_ms:.0} ms; paranoia-level-1 request rules {:.1}%, request rules {:.1}%, no_expect_ids cases {:.1}%",
        crs.rule_count(),
        pl1.rate(),
        requests.rate(),
        no_expect.rate()
    );
    if json {
        let per_file: serde_json::Map<String, serde_json::Value> =
            files.iter().map(|(k, t)| (k.clone(), t.json())).collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({
                "total": total.json(),
                "pl1_request_rules": pl1.json(),
                "request_rules": requests.json(),
                "no_expect_ids": no_expect.json(),
                "load_ms": load_ms.round(),
                "files": per_file,
            })
        );
    }
    let _ = writeln!(
        out,
        "crs: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    let mut ok = true;
    for ((what, tally), min) in [
        ("paranoia-level-1 request rules", &pl1),
        ("request rules", &requests),
        ("no_expect_ids cases", &no_expect),
    ]
    .into_iter()
    .zip(minimum)
    {
        if tally.rate() < min {
            eprintln!(
                "portcullis-waf: the pass rate of {what} is {:.1}%, below {min}%",
                tally.rate()
            );
            ok = false;
        }
    }
    Ok(ok)
}

/// Runs the command with `args` (without the program name), as the `portcullis-waf` binary and
/// `portcullis waf` do.
pub fn main(args: Vec<String>) -> ExitCode {
    let mut argv = args.clone().into_iter().peekable();
    if argv.peek().map(String::as_str) == Some("crs-test") {
        argv.next();
        return match crs_test(argv) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("portcullis-waf: {e}");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse_args(args.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-waf: {e}");
            ExitCode::FAILURE
        }
    }
}
