use super::*;

fn t(t: Transform, input: &[u8]) -> Vec<u8> {
    t.apply(input).into_owned()
}

fn s(tr: Transform, input: &str) -> String {
    String::from_utf8_lossy(&t(tr, input.as_bytes())).into_owned()
}

#[test]
fn names_round_trip_and_are_case_insensitive() {
    for (name, tr) in NAMES {
        assert_eq!(name.parse::<Transform>().unwrap(), *tr);
        assert_eq!(tr.name().parse::<Transform>().unwrap(), *tr);
    }
    assert_eq!(
        "base64decode".parse::<Transform>().unwrap(),
        Transform::Base64Decode
    );
    assert_eq!(
        "URLDECODEUNI".parse::<Transform>().unwrap(),
        Transform::UrlDecodeUni
    );
    assert!("rot13".parse::<Transform>().is_err());
    let json = serde_json::to_string(&Transform::JsDecode).unwrap();
    assert_eq!(json, "\"jsDecode\"");
    assert_eq!(
        serde_json::from_str::<Transform>(&json).unwrap(),
        Transform::JsDecode
    );
    assert!(serde_json::from_str::<Transform>("\"nope\"").is_err());
}

#[test]
fn unchanged_values_are_borrowed() {
    for (_, tr) in NAMES {
        if matches!(
            tr,
            Transform::Base64Decode
                | Transform::Base64DecodeExt
                | Transform::HexEncode
                | Transform::Sha1
                | Transform::Length
                | Transform::DecodeBlobs
        ) {
            continue;
        }
        assert!(matches!(tr.apply(b"plain"), Cow::Borrowed(_)), "{tr}");
    }
}

#[test]
fn lowercase() {
    assert_eq!(s(Transform::Lowercase, "SeLeCt ÄB"), "select Äb");
}

#[test]
fn url_decode() {
    assert_eq!(s(Transform::UrlDecode, "a%20b+c%3d%3D"), "a b c==");
    // Invalid and truncated sequences are kept.
    assert_eq!(s(Transform::UrlDecode, "100%zz%4"), "100%zz%4");
    assert_eq!(s(Transform::UrlDecode, "%"), "%");
    assert_eq!(t(Transform::UrlDecode, b"%00%ff"), [0, 0xff]);
    // %u is not decoded by plain urlDecode.
    assert_eq!(s(Transform::UrlDecode, "%u0041"), "%u0041");
}

#[test]
fn url_decode_uni() {
    assert_eq!(s(Transform::UrlDecodeUni, "%u0041%U0042"), "AB");
    // Full-width ASCII maps back to ASCII.
    assert_eq!(s(Transform::UrlDecodeUni, "%uff1cscript%uff1e"), "<script>");
    // Other code points keep their low byte.
    assert_eq!(t(Transform::UrlDecodeUni, b"%u2215"), [0x15]);
    assert_eq!(s(Transform::UrlDecodeUni, "%u00zz%u12"), "%u00zz%u12");
    assert_eq!(s(Transform::UrlDecodeUni, "%41+"), "A ");
}

#[test]
fn utf8_to_unicode() {
    assert_eq!(s(Transform::Utf8ToUnicode, "aé✓"), "a%u00e9%u2713");
    assert_eq!(t(Transform::Utf8ToUnicode, b"a\xffb"), b"a\xffb");
}

#[test]
fn html_entity_decode() {
    assert_eq!(
        s(Transform::HtmlEntityDecode, "&lt;script&gt;&quot;&amp;"),
        "<script>\"&"
    );
    assert_eq!(
        s(Transform::HtmlEntityDecode, "&#60;&#x3c;&#X3C&#60"),
        "<<<<"
    );
    assert_eq!(s(Transform::HtmlEntityDecode, "&LT;"), "<");
    assert_eq!(t(Transform::HtmlEntityDecode, b"a&nbsp;b"), b"a\xa0b");
    assert_eq!(
        s(Transform::HtmlEntityDecode, "&unknown; & &#; &#x;"),
        "&unknown; & &#; &#x;"
    );
    // Huge numbers keep the low byte and never overflow.
    // At most 8 digits are read (99999999 = 0x5F5E0FF, low byte 0xFF); the rest stays.
    assert_eq!(
        t(Transform::HtmlEntityDecode, b"&#99999999999999;"),
        b"\xff999999;"
    );
}

#[test]
fn js_decode() {
    assert_eq!(s(Transform::JsDecode, r"\x3cscript\x3e"), "<script>");
    assert_eq!(s(Transform::JsDecode, r"\u0061lert\uff08\uff09"), "alert()");
    assert_eq!(s(Transform::JsDecode, r"\141\t\n\'\q"), "a\t\n'q");
    assert_eq!(s(Transform::JsDecode, r"\x4"), "x4");
    assert_eq!(s(Transform::JsDecode, "end\\"), "end\\");
}

#[test]
fn escape_seq_decode() {
    assert_eq!(
        s(Transform::EscapeSeqDecode, r"a\x41\102\n\\\?\q"),
        "aAB\n\\?\\q"
    );
}

#[test]
fn css_decode() {
    assert_eq!(s(Transform::CssDecode, r"\3c script\3e"), "<script>");
    assert_eq!(s(Transform::CssDecode, r"j\61 vascript"), "javascript");
    assert_eq!(s(Transform::CssDecode, r"\00006a"), "j");
    assert_eq!(s(Transform::CssDecode, "\\ff1c"), "<");
    assert_eq!(s(Transform::CssDecode, "a\\\nb\\zc"), "abzc");
    assert_eq!(s(Transform::CssDecode, "x\\"), "x\\");
}

#[test]
fn nulls_and_whitespace() {
    assert_eq!(t(Transform::RemoveNulls, b"a\0b\0"), b"ab");
    assert_eq!(t(Transform::ReplaceNulls, b"a\0b"), b"a b");
    assert_eq!(
        t(Transform::CompressWhitespace, b"a \t\n b\xa0\xa0c"),
        b"a b c"
    );
    for (input, want) in [
        ("a b c", "a b c"),
        (" a  b ", " a b "),
        ("\ta\n", " a "),
        ("a  ", "a "),
        ("   ", " "),
        ("", ""),
        ("ab\r\n\r\ncd", "ab cd"),
    ] {
        assert_eq!(s(Transform::CompressWhitespace, input), want, "{input:?}");
    }
    assert!(matches!(
        apply_all(&[Transform::CompressWhitespace], b"one two"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(t(Transform::RemoveWhitespace, b" a \t b\xa0c "), b"abc");
    assert_eq!(s(Transform::Trim, " \t a b \n"), "a b");
    assert_eq!(s(Transform::TrimLeft, "  a "), "a ");
    assert_eq!(s(Transform::TrimRight, "  a "), "  a");
}

#[test]
fn comments() {
    assert_eq!(s(Transform::RemoveComments, "sel/**/ect 1"), "select 1");
    assert_eq!(s(Transform::RemoveComments, "a<!-- x -->b"), "ab");
    assert_eq!(s(Transform::RemoveComments, "1 or 1=1-- rest"), "1 or 1=1 ");
    assert_eq!(s(Transform::RemoveComments, "1#rest"), "1 ");
    assert_eq!(s(Transform::RemoveComments, "a/* unterminated"), "a");
    assert_eq!(
        s(Transform::RemoveCommentsChar, "a/*b*/c--d#e<!--f-->"),
        "abcdef"
    );
    assert_eq!(
        s(Transform::ReplaceComments, "union/**/select/*x*/1"),
        "union select 1"
    );
    assert_eq!(s(Transform::ReplaceComments, "a/* open"), "a ");
}

#[test]
fn paths() {
    assert_eq!(s(Transform::NormalizePath, "/a/./b//c/../d"), "/a/b/d");
    assert_eq!(
        s(Transform::NormalizePath, "/../../etc/passwd"),
        "/etc/passwd"
    );
    assert_eq!(
        s(Transform::NormalizePath, "../../etc/passwd"),
        "../../etc/passwd"
    );
    assert_eq!(s(Transform::NormalizePath, "a/b/../../../x"), "../x");
    assert_eq!(s(Transform::NormalizePath, "/a/b/"), "/a/b/");
    assert_eq!(s(Transform::NormalizePath, "/a/b/.."), "/a/");
    assert_eq!(
        s(Transform::NormalizePathWin, r"C:\windows\..\boot.ini"),
        "C:/boot.ini"
    );
    assert_eq!(s(Transform::NormalizePath, ""), "");
}

#[test]
fn command_lines() {
    assert_eq!(
        s(Transform::CmdLine, r#"C^:\WIN"DOWS"\system32\cmd.exe"#),
        "c:windowssystem32cmd.exe"
    );
    assert_eq!(
        s(Transform::CmdLine, "cat  /etc/passwd;id,uname\t-a"),
        "cat/etc/passwd id uname -a"
    );
    assert_eq!(s(Transform::CmdLine, "echo (x)"), "echo(x)");
    assert_eq!(s(Transform::CmdLine, "ls"), "ls");
}

#[test]
fn base64() {
    assert_eq!(
        s(Transform::Base64Decode, "aGVsbG8gd29ybGQ="),
        "hello world"
    );
    assert_eq!(s(Transform::Base64Decode, "aGVsbG8"), "hello");
    assert_eq!(s(Transform::Base64Decode, "aGVs!bG8"), "hel");
    assert_eq!(s(Transform::Base64DecodeExt, "aGVs!bG8"), "hello");
    assert_eq!(s(Transform::Base64Decode, ""), "");
    // The URL-safe alphabet is accepted too.
    assert_eq!(t(Transform::Base64Decode, b"-_8"), [0xfb, 0xff]);
}

#[test]
fn encodings_and_digests() {
    assert_eq!(s(Transform::HexEncode, "A\n"), "410a");
    assert_eq!(s(Transform::Length, "héllo"), "6");
    assert_eq!(
        hex_encode(&t(Transform::Sha1, b"abc")),
        b"a9993e364706816aba3e25717850c26c9cd0d89d"
    );
}

#[test]
fn pipelines_apply_in_order() {
    let p = [
        Transform::UrlDecodeUni,
        Transform::HtmlEntityDecode,
        Transform::Lowercase,
    ];
    assert_eq!(apply_all(&p, b"%26lt;SCRIPT%3E").as_ref(), b"<script>");
    assert!(matches!(apply_all(&p, b"clean"), Cow::Borrowed(_)));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
    for len in 0..300 {
        let input: Vec<u8> = (0..len)
            .map(|_| {
                let seed = next();
                // Bias towards the bytes the decoders care about.
                let special = b"%u\\&#;x/.-*<!>+ \0\xa0\xffFf09";
                if seed.is_multiple_of(3) {
                    special[(seed >> 8) as usize % special.len()]
                } else {
                    seed as u8
                }
            })
            .collect();
        for (_, tr) in NAMES {
            let _ = tr.apply(&input);
        }
    }
}

/// Every string of up to `len` bytes over `alphabet`.
fn all_strings(alphabet: &[u8], len: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut frontier = vec![Vec::new()];
    for _ in 0..len {
        let mut next = Vec::new();
        for s in &frontier {
            for &b in alphabet {
                let mut t: Vec<u8> = s.clone();
                t.push(b);
                next.push(t);
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

#[test]
fn unchanged_shortcuts_agree_with_the_full_transformations() {
    // The shortcuts say "unchanged" only when the full transformation leaves the value as it
    // is; and they say it for most plain values (they are worth having).
    let mut said = 0;
    for s in all_strings(b"a/.\\", 6) {
        for windows in [false, true] {
            if super::normal_already(&s, windows) {
                said += 1;
                assert_eq!(super::normalize_path_slow(&s, windows), &s[..], "{s:?}");
            }
        }
    }
    assert!(said > 100, "{said}");
    let mut said = 0;
    for s in all_strings(b"aA /(,;\t\\'^\"", 4) {
        if super::cmd_line_already(&s) {
            said += 1;
            assert_eq!(super::cmd_line_slow(&s), &s[..], "{s:?}");
        }
    }
    assert!(said > 100, "{said}");
    assert!(super::cmd_line_already(b"ls -la tmp"));
    assert!(!super::cmd_line_already(b"ls -la /tmp"));
    assert!(!super::cmd_line_already(b"ls  -la"));
    assert!(super::normal_already(b"/products/search", false));
    assert!(!super::normal_already(b"/a/../b", false));
}

/// `cmdLine` written the plain way, as ModSecurity describes it: drop `\ " ' ^`; drop
/// spaces before `/` and `(`; turn runs of whitespace, `,` and `;` into one space; lowercase.
fn cmd_line_reference(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut space = false;
    for &b in input {
        match b {
            b'\\' | b'"' | b'\'' | b'^' => {}
            b',' | b';' | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0 => {
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            b'/' | b'(' => {
                while out.last() == Some(&b' ') {
                    out.pop();
                }
                out.push(b);
                space = false;
            }
            b => {
                out.push(b.to_ascii_lowercase());
                space = false;
            }
        }
    }
    out
}

#[test]
fn cmd_line_agrees_with_the_plain_reference_on_every_short_string() {
    let mut changed = 0;
    for s in all_strings(b"aA /(,;\t\\'\xa0", 5) {
        let got = Transform::CmdLine.apply(&s);
        let want = cmd_line_reference(&s);
        assert_eq!(got.as_ref(), &want[..], "{s:?}");
        assert_eq!(matches!(got, Cow::Owned(_)), want != s, "{s:?}");
        changed += usize::from(want != s);
    }
    assert!(changed > 10_000, "{changed}");
}

#[test]
fn trimming_reports_the_change() {
    assert!(matches!(Transform::Trim.apply(b"  a "), Cow::Owned(v) if v == b"a"));
    assert!(matches!(Transform::TrimLeft.apply(b"a "), Cow::Borrowed(_)));
    let p = [Transform::Trim, Transform::Lowercase];
    assert_eq!(apply_all(&p, b" \tAB\n").as_ref(), b"ab");
}

#[test]
fn values_without_a_trigger_byte_are_left_as_they_are() {
    // For each transformation with a trigger: every string of up to 4 bytes over a sample of
    // the bytes outside its trigger, then 20,000 random strings of those bytes up to 60 long,
    // come back borrowed.
    let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for (_, tr) in NAMES {
        let Some(trigger) = tr.trigger() else {
            continue;
        };
        let quiet: Vec<u8> = (0..=255_u8).filter(|b| !trigger(*b)).collect();
        // The bytes the transformations care about most, where they are not triggers.
        let sample: Vec<u8> = b"%u\\&#;x/.-*<!>+ \t\0\xa0\xffFfA09aZ\"'^,()?"
            .iter()
            .copied()
            .filter(|b| !trigger(*b))
            .collect();
        let mut values = all_strings(&sample, 4);
        for _ in 0..20_000 {
            let len = (next() % 61) as usize;
            values.push(
                (0..len)
                    .map(|_| quiet[(next() % quiet.len() as u64) as usize])
                    .collect(),
            );
        }
        for v in &values {
            assert!(
                matches!(tr.apply(v), Cow::Borrowed(_)),
                "{tr} changed {v:?}, which has none of its trigger bytes"
            );
            checked += 1;
        }
    }
    assert!(checked > 300_000, "{checked}");
}

#[test]
fn transformations_write_only_their_input_bytes_and_those_they_create() {
    // Every string of up to 4 bytes over the bytes the transformations care about, then
    // 20,000 random strings over every byte, through each transformation that does not
    // create every byte: its output holds only bytes of its input and bytes it `creates`.
    let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
    let sample: &[u8] = b"%u\\&#;x/.-*<!>+ \t\0\xa0\xffFfA09aZ\"'^,()?";
    let mut values = all_strings(sample, 4);
    for _ in 0..20_000 {
        let len = (next() % 61) as usize;
        values.push((0..len).map(|_| (next() % 256) as u8).collect());
    }
    let mut checked = 0;
    for (_, tr) in NAMES {
        let creates = tr.creates();
        if (0..=255_u8).all(creates) {
            continue;
        }
        for v in &values {
            let out = tr.apply(v);
            for &b in out.iter() {
                assert!(
                    v.contains(&b) || creates(b),
                    "{tr} wrote {b:#x} into {v:?}, which lacks it"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 300_000, "{checked}");
}
