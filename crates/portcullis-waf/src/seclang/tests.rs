use super::*;

fn one(text: &str) -> Directive {
    let mut all = parse("t.conf", text).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0).directive
}

#[test]
fn rules_with_continuations_quotes_and_actions() {
    let text = r#"
# a comment
SecRule REQUEST_HEADERS:User-Agent|!REQUEST_COOKIES:/^_ga(?:_\w+)?$/|&ARGS "@rx ^(?:a\"b|c\\d)" \
    "id:920100,\
    phase:1,\
    block,\
    t:none,t:lowercase,\
    msg:'Invalid HTTP Request Line, found: %{MATCHED_VAR}',\
    setvar:'tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}',\
    chain"
"#;
    let parsed = parse("t.conf", text).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].origin.line, 3);
    let Directive::Rule {
        variables,
        operator,
        actions,
    } = &parsed[0].directive
    else {
        panic!("{parsed:?}");
    };
    assert_eq!(
        variables,
        &[
            Variable {
                name: "REQUEST_HEADERS".into(),
                key: Some(Key::Name("User-Agent".into())),
                count: false,
                exclude: false
            },
            Variable {
                name: "REQUEST_COOKIES".into(),
                key: Some(Key::Regex(r"^_ga(?:_\w+)?$".into())),
                count: false,
                exclude: true
            },
            Variable {
                name: "ARGS".into(),
                key: None,
                count: true,
                exclude: false
            },
        ]
    );
    // `\"` is a quote; other backslashes are kept for the regex compiler.
    assert_eq!(operator.name, "rx");
    assert_eq!(operator.param, r#"^(?:a"b|c\\d)"#);
    let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "phase", "block", "t", "t", "msg", "setvar", "chain"]
    );
    assert_eq!(
        actions[5].value.as_deref(),
        Some("Invalid HTTP Request Line, found: %{MATCHED_VAR}")
    );
    assert_eq!(
        actions[6].value.as_deref(),
        Some("tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}")
    );
}

#[test]
fn operators_variables_and_other_directives() {
    let Directive::Rule { operator, .. } =
        one(r#"SecRule ARGS "!@within %{tx.allowed_methods}" "id:1""#)
    else {
        panic!()
    };
    assert_eq!(
        (
            operator.name.as_str(),
            operator.negated,
            operator.param.as_str()
        ),
        ("within", true, "%{tx.allowed_methods}")
    );
    let Directive::Rule { operator, .. } = one(r#"SecRule ARGS "attack" "id:1""#) else {
        panic!()
    };
    assert_eq!(
        (operator.name.as_str(), operator.param.as_str()),
        ("rx", "attack")
    );
    let Directive::Rule { variables, .. } =
        one(r#"SecRule XML:/*|ARGS:'a b'|TX:/^msg_\/x/ "@unconditionalMatch" "id:1""#)
    else {
        panic!()
    };
    assert_eq!(variables[0].key, Some(Key::XPath("/*".into())));
    assert_eq!(variables[1].key, Some(Key::Name("a b".into())));
    assert_eq!(variables[2].key, Some(Key::Regex(r"^msg_\/x".into())));
    assert_eq!(
        one("SecMarker \"END-HOST-CHECK\""),
        Directive::Marker("END-HOST-CHECK".into())
    );
    assert_eq!(one("SecMarker END"), Directive::Marker("END".into()));
    assert_eq!(
        one(r#"SecRuleUpdateTargetById 932240-932250,942100 "!REQUEST_COOKIES:/^_ga/""#),
        Directive::UpdateTargetById {
            ids: vec![(932240, 932250), (942100, 942100)],
            variables: vec![Variable {
                name: "REQUEST_COOKIES".into(),
                key: Some(Key::Regex("^_ga".into())),
                count: false,
                exclude: true
            }],
            replaced: None,
        }
    );
    assert_eq!(
        one("SecRuleRemoveById 942100 920000-920999"),
        Directive::RemoveById(vec![(942100, 942100), (920000, 920999)])
    );
    assert!(
        parse("t.conf", "SecRequestBodyAccess On")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn errors_name_the_file_line_and_construct() {
    let err = |text: &str| parse("rules/x.conf", text).unwrap_err().to_string();
    let e = err("\n\nSecRuleScript /tmp/x.lua");
    assert!(e.starts_with("rules/x.conf:3: "), "{e}");
    assert!(e.contains("SecRuleScript"), "{e}");
    assert!(err(r#"SecRule ARGS "@rx a"#).contains("unterminated"));
    assert!(err(r#"SecRule ARGS "@rx a" "id:1,msg:'x""#).contains("unterminated `'`"));
    assert!(err(r#"SecRule ARGS:/abc "@rx a" "id:1""#).contains("/regex/"));
    assert!(err(r#"SecRule "@rx a""#).contains("2 to 3"));
    assert!(err(r#"SecRule ARGS "@rx a" "id:1,,phase:2""#).contains("empty action"));
    assert!(err("SecAction \\\n").contains("continued"));
    assert!(err(r#"SecRuleRemoveById 10-2"#).contains("backwards"));
}

#[test]
fn arbitrary_text_never_panics() {
    let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let alphabet = b"SecRule ARGS|!&:/'\"\\@rx,id:1 \n#phase";
    for _ in 0..5000 {
        let len = (seed % 80) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| {
                seed = next();
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = parse("fuzz.conf", &String::from_utf8_lossy(&text));
    }
}

/// Every file of the Core Rule Set in the shared data parses (the crate's tests may read it).
#[test]
fn the_core_rule_set_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
    let Ok(entries) = std::fs::read_dir(dir.join("rules")) else {
        panic!(
            "the CRS is expected beside the repository at {}",
            dir.display()
        );
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.push(dir.join("crs-setup.conf.example"));
    let mut rules = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        rules += parsed
            .iter()
            .filter(|d| matches!(d.directive, Directive::Rule { .. } | Directive::Action(_)))
            .count();
    }
    assert!(rules > 600, "{rules} rules");
}
