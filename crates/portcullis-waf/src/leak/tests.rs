use super::*;

fn guard(config: LeakGuardConfig) -> Arc<LeakGuard> {
    Arc::new(LeakGuard::new(&config).unwrap())
}

fn kinds(g: &LeakGuard, text: &str) -> Vec<&'static str> {
    g.scan(text.as_bytes())
        .into_iter()
        .map(|f| f.kind)
        .collect()
}

const GH: &str = "ghp_R8sVq2LmZ4tY7wXn1cK9pF3hJ6dB0aE5uGiT";

#[test]
fn finds_secrets_and_pii_and_skips_lookalikes() {
    let g = guard(LeakGuardConfig::default());
    assert_eq!(
        kinds(&g, &format!("token {GH} ok")),
        ["secret.github_token"]
    );
    assert!(kinds(&g, "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_empty());
    assert_eq!(kinds(&g, "card 4111 1111 1111 1111 thanks"), ["pii.card"]);
    assert!(kinds(&g, "card 4111 1111 1111 1112").is_empty());
    assert_eq!(kinds(&g, "ssn 078-05-1123"), ["pii.ssn"]);
    assert_eq!(kinds(&g, "IBAN DE89 3704 0044 0532 0130 00."), ["pii.iban"]);
    assert_eq!(kinds(&g, "mail me: jane.doe@example.org"), ["pii.email"]);
    assert_eq!(
        kinds(&g, "https://admin:s3cr3tPa55@db.internal/"),
        ["secret.url_credentials"]
    );
    assert!(kinds(&g, "postgres://user:password@localhost:5432/db").is_empty());
    // IP addresses are off by default, on with `all`.
    assert!(kinds(&g, "from 10.1.2.3").is_empty());
    let all = guard(LeakGuardConfig {
        kinds: vec!["all".into()],
        ..LeakGuardConfig::default()
    });
    assert_eq!(kinds(&all, "from 10.1.2.3"), ["pii.ip_address"]);
    assert!(kinds(&g, "The meeting is at 10:30 on 2024-05-01, room 12.").is_empty());
}

#[test]
fn redacts_across_chunk_boundaries() {
    let g = guard(LeakGuardConfig::default());
    let text = format!("{{\"content\":\"your key is {GH} and card 4111-1111-1111-1111.\"}}");
    for split in 1..text.len() {
        let mut s = g.stream();
        let (a, b) = text.split_at(split);
        let mut out = s.push(a.as_bytes()).emit;
        out.extend(s.push(b.as_bytes()).emit);
        out.extend(s.finish().emit);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "{\"content\":\"your key is [REDACTED:secret.github_token] and card [REDACTED:pii.card].\"}",
            "split at {split}"
        );
        assert_eq!(s.counts().len(), 2);
    }
}

#[test]
fn byte_by_byte_stream_and_pem_blocks() {
    let g = guard(LeakGuardConfig::default());
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDAC4AWkdwKYSd8\n".to_owned()
        + &"Ks14IReLcYgADhoXk56ZzXIabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN\n".repeat(40)
        + "-----END PRIVATE KEY-----\nafter";
    let mut s = g.stream();
    let mut out = Vec::new();
    for b in key.as_bytes().chunks(7) {
        out.extend(s.push(b).emit);
    }
    out.extend(s.finish().emit);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("[REDACTED:secret.private_key]"), "{out}");
    assert!(out.ends_with("\nafter"), "{out}");
    assert!(!out.contains("Ks14"), "{out}");
}

#[test]
fn block_and_canaries() {
    let g = guard(LeakGuardConfig {
        canary_strings: vec!["zebra-oxide-4471".into()],
        ..LeakGuardConfig::default()
    });
    let mut s = g.stream();
    let first = s.push(b"harmless start of a long answer ".repeat(20).as_slice());
    assert!(!first.blocked);
    let next = s.push(b"and then zebra-oxide-4471 leaks");
    // The canary is still in the held-back tail: nothing of it was sent.
    assert!(!String::from_utf8_lossy(&next.emit).contains("zebra"));
    let end = s.finish();
    assert!(end.blocked && end.emit.is_empty());
    assert!(s.is_blocked());
    // Log only: nothing changes.
    let g = guard(LeakGuardConfig {
        pii: LeakAction::Log,
        ..LeakGuardConfig::default()
    });
    let mut s = g.stream();
    let mut out = s.push(b"mail jane.doe@example.org").emit;
    out.extend(s.finish().emit);
    assert_eq!(out, b"mail jane.doe@example.org");
    assert_eq!(s.counts().get("pii.email"), Some(&1));
}

#[test]
fn config_errors() {
    let err = |c: LeakGuardConfig| LeakGuard::new(&c).unwrap_err().to_string();
    assert!(
        err(LeakGuardConfig {
            kinds: vec!["pii.dna".into()],
            ..Default::default()
        })
        .contains("pii.dna")
    );
    assert!(
        err(LeakGuardConfig {
            canary_strings: vec!["abc".into()],
            ..Default::default()
        })
        .contains("canary")
    );
    assert!(
        err(LeakGuardConfig {
            holdback: 10,
            ..Default::default()
        })
        .contains("holdback")
    );
    let over = err(LeakGuardConfig {
        whole_body_limit: MAX_WHOLE_BODY_LIMIT + 1,
        ..Default::default()
    });
    assert!(over.contains("leakGuard.wholeBodyLimit"), "{over}");
    assert!(
        LeakGuard::new(&LeakGuardConfig {
            whole_body_limit: MAX_WHOLE_BODY_LIMIT,
            ..Default::default()
        })
        .is_ok()
    );
}

#[test]
fn a_body_pushed_as_its_last_chunk_is_scanned_once_and_whole() {
    let guard = Arc::new(LeakGuard::new(&LeakGuardConfig::default()).unwrap());
    let text = format!(
        "{}the key is ghp_R8sVq2LmZ4tY7wXn1cK9pF3hJ6dB0aE5uGiT at the end",
        "x".repeat(600)
    );
    let mut whole = guard.stream();
    let out = whole.push_last(text.as_bytes());
    // The same as a stream fed the body, then ended.
    let mut streamed = guard.stream();
    let mut expect = streamed.push(text.as_bytes()).emit;
    expect.extend(streamed.finish().emit);
    assert_eq!(out.emit, expect);
    assert!(
        String::from_utf8(out.emit)
            .unwrap()
            .ends_with("the key is [REDACTED:secret.github_token] at the end")
    );
    assert_eq!(whole.counts(), streamed.counts());
}

#[test]
fn json_numbers_are_not_national_ids() {
    // Epoch seconds and milliseconds in every API response: a bare ten-digit number passes
    // a mod-11 check one time in eleven, so only grouped forms of weakly checked ids count.
    let guard = LeakGuard::new(&LeakGuardConfig::default()).unwrap();
    for t in (1_700_000_000_u64..1_900_000_000).step_by(99_991) {
        for text in [
            format!("{{\"created\":{t},\"id\":\"chatcmpl-1\"}}"),
            format!("{{\"ts\":{}}}", t * 1000 + 123),
        ] {
            assert!(guard.scan(text.as_bytes()).is_empty(), "{text}");
        }
    }
    // The written forms still count.
    assert!(!guard.scan(b"NHS number 943 476 5919").is_empty());
}

#[test]
fn numeric_runs_are_the_regex_matches() {
    // The scanner finds what `[0-9]+(?:[ .-][0-9]+)*` finds, leftmost first, on text built
    // from digits, separators and letters in every order.
    let re = build(&[r"[0-9]+(?:[ .-][0-9]+)*"], MatchKind::LeftmostFirst).unwrap();
    let alphabet = b"0 9.-a";
    let mut seed = 0x9e37_79b9_u32;
    for len in 0..400 {
        let text: Vec<u8> = (0..len % 40)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                alphabet[seed as usize % alphabet.len()]
            })
            .collect();
        let want: Vec<_> = re.find_iter(&text).map(|m| m.range()).collect();
        let got: Vec<_> = numeric_runs(&text).collect();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&text));
    }
    let got: Vec<_> = numeric_runs(b"call 555-0100 or 4111 1111 1111 1111. 7.").collect();
    assert_eq!(got, [5..13, 17..36, 38..39]);
}
