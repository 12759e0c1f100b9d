use super::*;

fn args(p: &Parsed<Arg>) -> Vec<(&str, &[u8])> {
    p.items
        .iter()
        .map(|a| (a.name.as_str(), a.value.as_slice()))
        .collect()
}

#[test]
fn urlencoded() {
    let p = parse_urlencoded(
        b"q=union+select&x=%3Cscript%3E&flag&=empty&&",
        Limits::default(),
    );
    assert_eq!(
        args(&p),
        [
            ("q", &b"union select"[..]),
            ("x", b"<script>"),
            ("flag", b""),
            ("", b"empty")
        ]
    );
    assert_eq!(p.error, None);
    let bad = parse_urlencoded(b"a=100%&b=%zz", Limits::default());
    assert_eq!(bad.error, Some(BodyError::InvalidUrlEncoding));
    assert_eq!(
        args(&bad),
        [("a", &b"100%"[..]), ("b", b"%zz")],
        "still parsed, leniently"
    );
    let many = parse_urlencoded(
        "a=1&".repeat(20).as_bytes(),
        Limits {
            max_args: 5,
            max_depth: 8,
        },
    );
    assert_eq!(many.items.len(), 5);
    assert_eq!(many.error, Some(BodyError::TooComplex));
}

#[test]
fn json_is_flattened_with_dotted_names() {
    let p = parse_json(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"tool","content":[{"type":"text","text":"x"}]}],"n":2,"stream":true,"stop":null}"#,
        Limits::default(),
    );
    assert_eq!(p.error, None);
    // Members and items come in the document's order.
    assert_eq!(
        args(&p),
        [
            ("model", &b"m"[..]),
            ("messages.0.role", b"user"),
            ("messages.0.content", b"hi"),
            ("messages.1.role", b"tool"),
            ("messages.1.content.0.type", b"text"),
            ("messages.1.content.0.text", b"x"),
            ("n", b"2"),
            ("stream", b"true"),
            ("stop", b""),
        ]
    );
    // A repeated key: both values are kept (an application may read either).
    let p = parse_json(
        br#"{"a":"ok","a":"<script>","b":{"c":1.5,"d":-3,"e":1e3,"f":"\u00e9"}}"#,
        Limits::default(),
    );
    assert_eq!(
        args(&p),
        [
            ("a", &b"ok"[..]),
            ("a", b"<script>"),
            ("b.c", b"1.5"),
            ("b.d", b"-3"),
            ("b.e", b"1000.0"),
            ("b.f", "\u{e9}".as_bytes()),
        ]
    );
    assert_eq!(
        args(&parse_json(b"\"top\"", Limits::default())),
        [("", &b"top"[..])]
    );
}

#[test]
fn json_problems_are_findings() {
    for bad in [&b"{"[..], b"{\"a\":}", b"", b"\xff", b"[1,]"] {
        let p = parse_json(bad, Limits::default());
        assert_eq!(p.error, Some(BodyError::InvalidJson), "{bad:?}");
    }
    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    let p = parse_json(
        deep.as_bytes(),
        Limits {
            max_args: 100,
            max_depth: 10,
        },
    );
    assert_eq!(p.error, Some(BodyError::TooComplex));
    // Far deeper than serde_json's own recursion limit: an error, not a stack overflow
    // (below the depth limit the value is skipped without recursion).
    let abyss = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let p = parse_json(abyss.as_bytes(), Limits::default());
    assert_eq!(p.error, Some(BodyError::TooComplex));
    assert!(p.items.is_empty());
    // Past serde_json's recursion limit within the depth limit: invalid, not a crash.
    let p = parse_json(
        abyss.as_bytes(),
        Limits {
            max_args: 100,
            max_depth: 100_000,
        },
    );
    assert_eq!(p.error, Some(BodyError::InvalidJson));
    let unclosed = "[".repeat(100_000);
    assert_eq!(
        parse_json(unclosed.as_bytes(), Limits::default()).error,
        Some(BodyError::InvalidJson)
    );
    let wide = format!("[{}]", vec!["1"; 50].join(","));
    let p = parse_json(
        wide.as_bytes(),
        Limits {
            max_args: 10,
            max_depth: 8,
        },
    );
    assert_eq!(p.items.len(), 10);
    assert_eq!(p.error, Some(BodyError::TooComplex));
}

const BOUNDARY: &str = "----x42";

fn multipart(parts: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (name, filename, value) in parts {
        body.push_str(&format!("--{BOUNDARY}\r\n"));
        match filename {
            Some(f) => body.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: text/plain\r\n\r\n")),
            None => body.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")),
        }
        body.push_str(value);
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    body.into_bytes()
}

#[test]
fn multipart_fields_and_files() {
    assert_eq!(
        multipart_boundary("multipart/form-data; boundary=\"----x42\"").as_deref(),
        Some(BOUNDARY)
    );
    assert_eq!(
        multipart_boundary("multipart/form-data; charset=utf-8"),
        None
    );
    assert_eq!(multipart_boundary("application/json; boundary=x"), None);
    let body = multipart(&[
        ("title", None, "hello\r\nworld"),
        ("upload", Some("../../etc/passwd"), "root:x:0:0"),
    ]);
    let p = parse_multipart(&body, BOUNDARY, Limits::default());
    assert_eq!(p.error, None);
    assert_eq!(p.items.len(), 2);
    assert_eq!(p.items[0].name, "title");
    assert_eq!(p.items[0].value, b"hello\r\nworld");
    assert_eq!(p.items[1].filename.as_deref(), Some("../../etc/passwd"));
    assert_eq!(p.items[1].value, b"root:x:0:0");
}

#[test]
fn malformed_multipart_is_a_finding() {
    let good = multipart(&[("a", None, "1")]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"no boundary here".to_vec(), "no boundary"),
        (good[..good.len() - 12].to_vec(), "a part is not terminated"),
        (
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n").into_bytes(),
            "part headers do not end",
        ),
        (
            format!("--{BOUNDARY}\r\nX-Other: 1\r\n\r\nv\r\n--{BOUNDARY}--").into_bytes(),
            "a part has no Content-Disposition",
        ),
        (
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nv\r\n--{BOUNDARY}--")
                .into_bytes(),
            "a part has no name",
        ),
        (
            format!("--{BOUNDARY}junk").into_bytes(),
            "no line break after a boundary",
        ),
    ];
    for (body, want) in cases {
        let p = parse_multipart(&body, BOUNDARY, Limits::default());
        assert_eq!(p.error, Some(BodyError::MalformedMultipart(want)), "{want}");
    }
    let many: Vec<(&str, Option<&str>, &str)> = (0..20).map(|_| ("a", None, "1")).collect();
    let p = parse_multipart(
        &multipart(&many),
        BOUNDARY,
        Limits {
            max_args: 3,
            max_depth: 8,
        },
    );
    assert_eq!(p.items.len(), 3);
    assert_eq!(p.error, Some(BodyError::TooComplex));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x1234_5678_u64;
    for len in 0..300 {
        let input: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let special = b"-\r\n=&%{}[]\":,";
                if seed.is_multiple_of(2) {
                    special[(seed >> 40) as usize % special.len()]
                } else {
                    (seed >> 33) as u8
                }
            })
            .collect();
        let _ = parse_urlencoded(&input, Limits::default());
        let _ = parse_json(&input, Limits::default());
        let _ = parse_multipart(&input, "-", Limits::default());
    }
}
