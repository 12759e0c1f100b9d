//! `portcullis-waf`: evaluate rule packs and the leak guard against labelled corpora.
//!
//! ```text
//! portcullis-waf eval --rules PACK_OR_FILE --jsonl FILE [--as prompt|param|response]
//!                     [--json] [--by FIELD] [--list flagged|missed]
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_waf::{LeakGuard, LeakGuardConfig, Waf, WafConfig};

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
    if portcullis_waf::builtin_pack(&args.rules).is_some() {
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

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
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
