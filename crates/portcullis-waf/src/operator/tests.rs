use super::*;

fn op(name: &str, param: &str) -> Operator {
    Operator::compile(name, param).unwrap()
}

fn cond(text: &str) -> Condition {
    Condition::parse(text).unwrap()
}

#[test]
fn rx_matches_bytes_and_rewrites_hex_escapes() {
    let re = op("rx", r"(?i)union\s+select");
    assert!(re.matches(b"1 UNION  select 2"));
    assert!(!re.matches(b"unionselect"));
    // Non-UTF-8 input is searched as bytes.
    assert!(op("rx", r"\xff\xfe").matches(b"a\xff\xfeb"));
    assert!(op("rx", r"\x{ff}").matches(b"\xff"));
    assert!(op("rx", r"[\x{0}-\x{8}]").matches(b"a\x07"));
    assert_eq!(rewrite_hex_escapes(r"a\x{41}b\x{7}c"), r"a\x41b\x07c");
    assert_eq!(rewrite_hex_escapes(r"\\x{41}"), r"\\x{41}");
    assert_eq!(rewrite_hex_escapes(r"\x{263a}"), r"\x{263a}");
    assert_eq!(rewrite_hex_escapes(r"\x{zz}"), r"\x{zz}");
    assert!(matches!(
        Operator::compile("rx", "(unclosed"),
        Err(OperatorError::BadParameter { operator: "rx", .. })
    ));
}

#[test]
fn pm_is_case_insensitive_over_phrases() {
    let pm = op("pm", "select union insert");
    assert!(pm.matches(b"xx UNION yy"));
    assert!(pm.matches(b"Insert"));
    assert!(!pm.matches(b"delete"));
    assert!(Operator::compile("pm", "   ").is_err());
    // Regex metacharacters and non-ASCII bytes are literal.
    let pm = op("pm", "a.b (x) \\d+ caf\u{e9} $[y]");
    assert!(pm.matches(b"-- A.B --"));
    assert!(!pm.matches(b"axb"));
    assert!(pm.matches(b"(X)"));
    assert!(pm.matches(b"\\D+"));
    assert!(!pm.matches(b"5"));
    assert!(pm.matches("CAF\u{e9}".as_bytes()));
    assert!(pm.matches(b"$[Y]"));
}

#[test]
fn string_operators() {
    assert!(op("streq", "POST").matches(b"POST"));
    assert!(!op("streq", "POST").matches(b"post"));
    assert!(op("contains", "..").matches(b"/a/../b"));
    assert!(op("contains", "").matches(b"anything"));
    assert!(op("beginsWith", "/admin").matches(b"/admin/x"));
    assert!(!op("beginsWith", "/admin").matches(b"/x/admin"));
    assert!(op("endsWith", ".php").matches(b"index.php"));
    let within = op("within", "GET HEAD POST OPTIONS");
    assert!(within.matches(b"HEAD"));
    assert!(!within.matches(b"DELETE"));
    assert!(!within.matches(b""));
    // Candidates share first bytes; the needle may end the parameter, or be longer than it.
    let slashed = op("within", "/content-encoding/ /proxy/ /lock-token/");
    for (value, hit) in [
        (&b"/proxy/"[..], true),
        (b"/lock-token/", true),
        (b"/content-encoding/", true),
        (b"/", true),
        (b"/prox/", false),
        (b"/lock-token/x", false),
        (b"/content-encoding/ /proxy/ /lock-token/ /x/", false),
    ] {
        assert_eq!(slashed.matches(value), hit, "{value:?}");
    }
}

#[test]
fn numeric_operators() {
    assert!(op("eq", "0").matches(b"0"));
    assert!(op("eq", "0").matches(b"abc"), "non-numbers count as 0");
    assert!(op("gt", "5").matches(b"6"));
    assert!(!op("gt", "5").matches(b"5"));
    assert!(op("ge", "5").matches(b" 5 "));
    assert!(op("lt", "0").matches(b"-3"));
    assert!(op("le", "10").matches(b"10abc"));
    assert!(
        !op("gt", "0").matches(b"99999999999999999999"),
        "overflow counts as 0"
    );
    assert!(Operator::compile("eq", "five").is_err());
}

#[test]
fn ip_match() {
    let ip = op("ipMatch", "10.0.0.0/8, 192.168.1.5,2001:db8::/32");
    assert!(ip.matches(b"10.1.2.3"));
    assert!(ip.matches(b"192.168.1.5"));
    assert!(!ip.matches(b"192.168.1.6"));
    assert!(ip.matches(b"2001:db8::1"));
    assert!(!ip.matches(b"not an ip"));
    assert!(!ip.matches(b"\xff"));
    // Host bits set are tolerated, as ModSecurity does.
    assert!(op("ipMatch", "10.0.0.1/8").matches(b"10.9.9.9"));
    assert!(Operator::compile("ipMatch", "10.0.0.0/99").is_err());
    assert!(Operator::compile("ipMatch", "").is_err());
}

#[test]
fn validators() {
    let range = op("validateByteRange", "9,10,13,32-126");
    assert!(!range.matches(b"plain text\r\n"));
    assert!(range.matches(b"nul\0"));
    assert!(range.matches(b"\xe9"));
    assert!(Operator::compile("validateByteRange", "300").is_err());
    assert!(Operator::compile("validateByteRange", "9-1").is_err());
    assert!(Operator::compile("validateByteRange", "a-b").is_err());

    // Ranges that forbid at most three bytes are searched for those bytes; the answers agree
    // with the table on every byte.
    for param in [
        "1-255",
        "0-9,11-255",
        "1-9,11-12,14-255",
        "0-254",
        "0-255",
        "32-126",
        "0,2-255",
    ] {
        let fast = op("validateByteRange", param);
        let mut allowed = [false; 256];
        for part in param.split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            for b in lo.parse::<u8>().unwrap()..=hi.parse::<u8>().unwrap() {
                allowed[usize::from(b)] = true;
            }
        }
        for b in 0..=255_u8 {
            let value = [b'a', b, b'z'];
            assert_eq!(
                fast.matches(&value),
                !allowed[usize::from(b)],
                "{param} on byte {b}"
            );
        }
        assert!(!fast.matches(b""), "{param} on nothing");
    }

    let utf8 = op("validateUtf8Encoding", "");
    assert!(!utf8.matches("héllo".as_bytes()));
    assert!(utf8.matches(b"\xc0\xaf"), "overlong");
    assert!(utf8.matches(b"\xed\xa0\x80"), "surrogate");
    assert!(utf8.matches(b"\xe2\x82"), "truncated");

    let url = op("validateUrlEncoding", "");
    assert!(!url.matches(b"a%20b%2F"));
    assert!(url.matches(b"100%"));
    assert!(url.matches(b"%zz"));
    assert!(url.matches(b"%4"));
}

#[test]
fn conditions_and_negation() {
    assert!(cond("@streq x").matches(b"x"));
    assert!(!cond("!@streq x").matches(b"x"));
    assert!(cond("!@streq x").matches(b"y"));
    assert!(cond("^abc").matches(b"abcdef"), "a bare pattern is @rx");
    assert!(cond("@unconditionalMatch").matches(b""));
    assert!(!cond("@noMatch").matches(b"x"));
    assert!(cond("!@noMatch").is_negated());
    assert!(matches!(Condition::parse("@nope x"), Err(OperatorError::Unknown(n)) if n == "nope"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let ops = [
        op("rx", "(?i)a.*b"),
        op("pm", "a b c"),
        op("within", "abc"),
        op("eq", "1"),
        op("ipMatch", "10.0.0.0/8"),
        op("validateByteRange", "32-126"),
        op("validateUtf8Encoding", ""),
        op("validateUrlEncoding", ""),
    ];
    let mut seed = 0x9e37_79b9_u64;
    for len in 0..200 {
        let input: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        for o in &ops {
            let _ = o.matches(&input);
        }
    }
}

#[test]
fn numbers_read_from_ascii_bytes_agree_with_numbers_read_from_text() {
    // Every string of up to 4 bytes over the bytes that matter to a number, and some long
    // ones: the byte path reads the same integer as the text path.
    let alphabet = b" \t\x0b-+09a.";
    let mut values: Vec<Vec<u8>> = vec![Vec::new()];
    let mut frontier = values.clone();
    for _ in 0..4 {
        frontier = frontier
            .iter()
            .flat_map(|v| {
                alphabet.iter().map(move |&b| {
                    let mut next = v.clone();
                    next.push(b);
                    next
                })
            })
            .collect();
        values.extend(frontier.iter().cloned());
    }
    values.push(b"9223372036854775807".to_vec());
    values.push(b"-9223372036854775808".to_vec());
    values.push(b"99999999999999999999".to_vec());
    values.push(b" \x0c 42 \r\n".to_vec());
    for v in &values {
        let text = std::str::from_utf8(v).unwrap();
        assert_eq!(super::to_int_ascii(v), super::to_int_text(text), "{text:?}");
    }
    assert!(values.len() > 7_000);
    assert_eq!(super::to_int(b" -17x"), -17);
    assert_eq!(super::to_int("\u{a0}5".as_bytes()), 5);
}

/// `@within`'s indexed search agrees with a plain search of every window, for every pair of
/// short strings over a small alphabet (so pairs repeat and overlap).
#[test]
fn within_agrees_with_a_window_search() {
    fn strings(len: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut frontier = vec![Vec::new()];
        for _ in 0..len {
            frontier = frontier
                .iter()
                .flat_map(|s: &Vec<u8>| b"/ab".iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all
    }
    let haystacks = strings(6);
    let needles = strings(4);
    let mut found = 0;
    for h in &haystacks {
        let indexed = super::Haystack::new(h);
        for n in &needles {
            let want = n.is_empty() || h.windows(n.len().max(1)).any(|w| w == n.as_slice());
            assert_eq!(indexed.contains(n), want, "{n:?} in {h:?}");
            found += usize::from(want);
        }
    }
    assert!(found > 10_000, "{found}");
}
