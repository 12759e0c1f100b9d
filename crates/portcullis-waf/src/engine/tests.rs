use super::*;
use crate::request::ParseOptions;
use crate::rule::PackSpec;

fn set(yaml: &str, paranoia: u8) -> RuleSet {
    let pack = PackSpec::from_yaml(yaml).unwrap();
    let rules: Vec<Rule> = pack
        .rules
        .iter()
        .map(|r| r.compile(None).unwrap())
        .collect();
    RuleSet::new(rules, paranoia).unwrap()
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Exchange {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    Exchange::from_request(&parts, b"", ParseOptions::default())
}

fn ids(e: &Evaluation) -> Vec<u32> {
    let mut v: Vec<u32> = e.matches.iter().map(|m| m.id).collect();
    v.sort_unstable();
    v
}

const PACK: &str = r#"
name: t
rules:
  - id: 1
    msg: traversal
    targets: [ARGS]
    transforms: [urlDecodeUni, normalizePath]
    operator: { rx: '\.\./' }
  - id: 2
    msg: script
    targets: [ARGS]
    transforms: [urlDecodeUni, normalizePath]
    operator: { rx: '<script' }
    severity: warning
  - id: 3
    msg: union select
    targets: [ARGS, "!ARGS:comment"]
    transforms: [lowercase]
    operator: { rx: 'union\s+select' }
  - id: 4
    msg: too many args
    targets: ["&ARGS"]
    operator: { gt: 3 }
    action: log
  - id: 5
    msg: scanner user agent
    targets: ["REQUEST_HEADERS:User-Agent"]
    transforms: [lowercase]
    operator: { pm: [sqlmap, nikto] }
    action: block
    severity: notice
  - id: 6
    msg: paranoid
    targets: [ARGS_NAMES]
    operator: { rx: '^x' }
    paranoia: 2
  - id: 7
    msg: chained
    targets: [REQUEST_METHOD]
    operator: { streq: GET }
    chain:
      - targets: ["ARGS:id"]
        operator: { rx: '^[0-9]+$' }
        negate: true
"#;

#[test]
fn rules_with_same_targets_and_pipeline_share_one_search() {
    let s = set(PACK, 1);
    // Rules 1 and 2 share targets and pipeline, but each starts with a rare literal: they are
    // searched alone, with their own prefilters. 6 is above the paranoia level.
    assert_eq!(s.group_count(), 0);
    assert!(s.rules().iter().all(|r| r.id() != 6));
    let e = s.evaluate(
        &get("/?a=..%2f..%2fetc&b=%3Cscript%3E", &[]),
        Phase::Request,
    );
    assert_eq!(ids(&e), [1, 2]);
    assert_eq!(e.score, 5 + 3);
    assert!(e.matches.iter().any(|m| m.variable == "ARGS:a"));
}

#[test]
fn exclusions_counts_actions_and_chains() {
    let s = set(PACK, 2);
    let e = s.evaluate(&get("/?comment=union%20select&q=1", &[]), Phase::Request);
    assert!(ids(&e).is_empty(), "{e:?}");
    let e = s.evaluate(
        &get(
            "/?q=UNION%20SELECT&a=1&b=2&c=3",
            &[("user-agent", "sqlmap/1.7")],
        ),
        Phase::Request,
    );
    assert_eq!(ids(&e), [3, 4, 5]);
    // `log` adds nothing; `block` is flagged; notice = 2 points.
    assert_eq!(e.score, 5 + 2);
    assert!(e.block_rule);
    // Chain: GET with a non-numeric id.
    let e = s.evaluate(&get("/?id=1%20or%201", &[]), Phase::Request);
    assert_eq!(ids(&e), [7]);
    let e = s.evaluate(&get("/?id=42", &[]), Phase::Request);
    assert!(ids(&e).is_empty());
    // Paranoia level 2 includes rule 6.
    let e = s.evaluate(&get("/?xy=1", &[]), Phase::Request);
    // (Rule 7's negated chain needs an `id` to test: with none, it does not match.)
    assert_eq!(ids(&e), [6]);
}

#[test]
fn compile_errors_name_the_rule() {
    let bad = |yaml: &str| {
        let pack = PackSpec::from_yaml(yaml);
        match pack {
            Err(e) => e.to_string(),
            Ok(p) => p
                .rules
                .iter()
                .map(|r| r.compile(None))
                .find_map(Result::err)
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }
    };
    let e = bad("name: t\nrules:\n  - {id: 9, msg: m, targets: [ARGS], operator: {rx: '(' }}\n");
    assert!(e.contains("id=9") && e.contains("rx"), "{e}");
    let e = bad("name: t\nrules:\n  - {id: 9, msg: m, targets: [ARGZ], operator: {rx: 'a' }}\n");
    assert!(e.contains("id=9") && e.contains("ARGZ"), "{e}");
    let e = bad(
        "name: t\nrules:\n  - {id: 9, msg: m, targets: [ARGS], operator: {rx: 'a'}, colour: red}\n",
    );
    assert!(e.contains("colour"), "{e}");
    let e = bad(
        "name: t\nrules:\n  - {id: 9, msg: m, targets: [ARGS], transforms: [rot13], operator: {rx: 'a'}}\n",
    );
    assert!(e.contains("rot13"), "{e}");
    let e = bad(
        "name: t\nrules:\n  - {id: 9, msg: m, targets: [RESPONSE_BODY], operator: {rx: 'a'}}\n",
    );
    assert!(e.contains("phase"), "{e}");
    let dup = PackSpec::from_yaml("name: t\nrules:\n  - {id: 1, msg: m, targets: [ARGS], operator: {rx: a}}\n  - {id: 1, msg: m, targets: [ARGS], operator: {rx: b}}\n").unwrap();
    let rules: Vec<Rule> = dup.rules.iter().map(|r| r.compile(None).unwrap()).collect();
    assert!(
        RuleSet::new(rules, 1)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
}

#[test]
fn response_rules_see_the_response() {
    let s = set(
        "name: t\nrules:\n  - {id: 1, msg: m, phase: response, targets: [RESPONSE_BODY], operator: {contains: 'stack trace'}}\n",
        1,
    );
    let mut ex = get("/", &[]);
    assert!(s.evaluate(&ex, Phase::Response).matches.is_empty());
    ex.set_response(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        &http::HeaderMap::new(),
        b"a stack trace here",
    );
    assert_eq!(ids(&s.evaluate(&ex, Phase::Response)), [1]);
    assert!(s.evaluate(&ex, Phase::Request).matches.is_empty());
}

#[test]
fn the_ai_guard_pack_compiles_and_groups() {
    let s = set(crate::waf::AI_GUARD, 1);
    assert!(s.rules().len() >= 30);
    assert!(s.group_count() >= 1);
}

/// The rules `evaluate` reports for a query parameter, against each rule run on its own.
fn differential(rs: &RuleSet, text: &str) {
    let encoded: String = text
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let uri = format!("/?q={encoded}");
    let ex = get(&uri, &[]);
    let got = ids(&rs.evaluate(&ex, Phase::Request));
    let mut want: Vec<u32> = rs
        .rules()
        .iter()
        .filter(|r| {
            let value = crate::transform::apply_all(&r.first.pipeline, text.as_bytes());
            r.first.condition.matches(&value)
        })
        .map(|r| r.id)
        .collect();
    want.sort_unstable();
    assert_eq!(got, want, "text: {text:?}");
}

#[test]
fn unions_and_lone_rules_agree_with_rules_run_one_by_one() {
    // Word-prefixed members (enough of them for a union), prefix-less members, members sharing
    // literals, look-behind at a line start, and one unbounded member.
    let pack = r#"
name: diff
rules:
  - { id: 1, msg: a, targets: [ARGS], transforms: [lowercase], operator: { rx: '\b(?:ignore|disregard) (?:all|the) rules\b' } }
  - { id: 2, msg: b, targets: [ARGS], transforms: [lowercase], operator: { rx: '\bignore\b.{0,20}\bprevious\b' } }
  - { id: 3, msg: c, targets: [ARGS], transforms: [lowercase], operator: { rx: '[a-z]+ mode\b' } }
  - { id: 4, msg: d, targets: [ARGS], transforms: [lowercase], operator: { rx: 'you(?:r)? .*\bsecret\b' } }
  - { id: 5, msg: e, targets: [ARGS], transforms: [lowercase], operator: { rx: '(?:^|\s)sys(?:tem)?:' } }
  - { id: 6, msg: f, targets: [ARGS], transforms: [lowercase], operator: { rx: 'rules(?: and)? previous' } }
  - { id: 7, msg: g, targets: [ARGS], transforms: [lowercase], operator: { rx: '\bsecret\b' } }
  - { id: 8, msg: h, targets: [ARGS], transforms: [lowercase], operator: { rx: '(?:all|the) (?:rules|mode)' } }
  - { id: 9, msg: i, targets: [ARGS], transforms: [lowercase], operator: { rx: '\w+ secret\b' } }
  - { id: 10, msg: j, targets: [ARGS], transforms: [lowercase], operator: { rx: '\bsys(?:tem)?: \w+' } }
  - { id: 11, msg: k, targets: [ARGS], transforms: [lowercase], operator: { rx: '\.\s*(?:sys|god)\b' } }
"#;
    let rs = set(pack, 1);
    assert_eq!(rs.group_count(), 1);
    let words = [
        "ignore",
        "disregard",
        "all",
        "the",
        "rules",
        "previous",
        "you",
        "your",
        "secret",
        "god",
        "mode",
        "sys:",
        "system:",
        "and",
        "xignore",
        "ignored",
        ".",
        "\n",
    ];
    let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let len = 1 + (next() % 200) as usize;
        let text: Vec<&str> = (0..len)
            .map(|_| words[(next() % words.len() as u64) as usize])
            .collect();
        differential(&rs, &text.join(" "));
    }
}
