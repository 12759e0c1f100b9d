use super::*;
use http::HeaderValue;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proxies(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::new(nets.iter().map(|n| n.parse::<IpCidr>().unwrap()))
}

fn headers(name: &str, values: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
    for v in values {
        map.append(name.clone(), HeaderValue::from_str(v).unwrap());
    }
    map
}

fn xff(values: &[&str]) -> HeaderMap {
    headers("x-forwarded-for", values)
}

fn fwd(values: &[&str]) -> HeaderMap {
    headers("forwarded", values)
}

#[test]
fn no_trusted_proxies_ignores_headers() {
    let none = TrustedProxies::none();
    let got = none.resolve(sock("10.0.0.1:5000"), &xff(&["203.0.113.9"]));
    assert_eq!(got.ip(), ip("10.0.0.1"));
    assert_eq!(got.source(), AddrSource::Peer);
    assert_eq!(got.proxy_hops(), 0);
    assert_eq!(got.peer(), sock("10.0.0.1:5000"));
    let got = none.resolve(sock("10.0.0.1:5000"), &fwd(&["for=203.0.113.9"]));
    assert_eq!(got.ip(), ip("10.0.0.1"));
}

#[test]
fn untrusted_peer_headers_are_ignored() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("198.51.100.4:5000"), &xff(&["203.0.113.9"]));
    assert_eq!(got.ip(), ip("198.51.100.4"));
    assert_eq!(got.source(), AddrSource::Peer);
}

#[test]
fn trusted_peer_without_header_is_the_client() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("10.1.1.1:5000"), &HeaderMap::new());
    assert_eq!(got.ip(), ip("10.1.1.1"));
    assert_eq!(got.source(), AddrSource::Peer);
    assert_eq!(got.proxy_hops(), 0);
}

#[test]
fn takes_right_most_untrusted_entry() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&["203.0.113.9"]));
    assert_eq!(got.ip(), ip("203.0.113.9"));
    assert_eq!(got.source(), AddrSource::XForwardedFor);
    assert_eq!(got.proxy_hops(), 1);
}

#[test]
fn spoofed_left_most_entries_are_not_believed() {
    let p = proxies(&["10.0.0.0/8"]);
    // The client sent `X-Forwarded-For: 127.0.0.1, 8.8.8.8`; the proxy appended the real peer.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["127.0.0.1, 8.8.8.8, 203.0.113.9"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.9"));
    // Even a spoofed entry that is inside the trusted range, left of the real client.
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&["10.9.9.9, 203.0.113.9"]));
    assert_eq!(got.ip(), ip("203.0.113.9"));
}

#[test]
fn walks_through_a_chain_of_trusted_proxies() {
    let p = proxies(&["10.0.0.0/8", "192.168.0.0/16"]);
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["6.6.6.6, 203.0.113.9, 192.168.1.1, 10.3.3.3"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.9"));
    assert_eq!(got.proxy_hops(), 3);
}

#[test]
fn multiple_header_lines_form_one_list() {
    let p = proxies(&["10.0.0.0/8"]);
    // Lines are concatenated in order; the last line is the right-most.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["6.6.6.6, 203.0.113.9", "10.1.1.1"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.9"));
    assert_eq!(got.proxy_hops(), 2);
}

#[test]
fn all_entries_trusted_yields_left_most() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&["10.0.0.5, 10.0.0.4"]));
    assert_eq!(got.ip(), ip("10.0.0.5"));
    assert_eq!(got.proxy_hops(), 2);
}

#[test]
fn ipv6_entries_and_peers() {
    let p = proxies(&["fd00::/8"]);
    let got = p.resolve(sock("[fd00::2]:443"), &xff(&["2001:db8::1"]));
    assert_eq!(got.ip(), ip("2001:db8::1"));
    let got = p.resolve(sock("[fd00::2]:443"), &xff(&["[2001:db8::2]:1234"]));
    assert_eq!(got.ip(), ip("2001:db8::2"));
    let got = p.resolve(sock("[fd00::2]:443"), &xff(&["[2001:db8::3]"]));
    assert_eq!(got.ip(), ip("2001:db8::3"));
    let got = p.resolve(sock("[fd00::2]:443"), &xff(&["2001:db8::4, fd00::9"]));
    assert_eq!(got.ip(), ip("2001:db8::4"));
}

#[test]
fn ipv4_mapped_peer_matches_ipv4_trust_and_is_reported_as_ipv4() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("[::ffff:10.0.0.2]:443"), &xff(&["::ffff:203.0.113.9"]));
    assert_eq!(got.ip(), ip("203.0.113.9"));
    let direct = ClientAddr::from_peer(sock("[::ffff:198.51.100.1]:80"));
    assert_eq!(direct.ip(), ip("198.51.100.1"));
}

#[test]
fn ipv4_with_port_is_accepted() {
    let p = proxies(&["10.0.0.0/8"]);
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&["203.0.113.9:4711"]));
    assert_eq!(got.ip(), ip("203.0.113.9"));
}

#[test]
fn malformed_entries_stop_at_the_last_trusted_address() {
    let p = proxies(&["10.0.0.0/8"]);
    for bad in [
        "garbage",
        "unknown",
        "",
        " ",
        "203.0.113.9:99999",
        "203.0.113.9:",
        "203.0.113.9:+80",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[203.0.113.9]",
        "fe80::1%eth0",
        "1.2.3",
        "203.0.113.9 203.0.113.10",
        "1.2.3.4:5:6",
    ] {
        let got = p.resolve(sock("10.0.0.2:5000"), &xff(&[bad]));
        assert_eq!(got.ip(), ip("10.0.0.2"), "entry {bad:?}");
        assert_eq!(got.source(), AddrSource::Peer, "entry {bad:?}");
    }
    // Garbage in the middle: the walk stops at the proxy that forwarded it.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["203.0.113.9, bogus, 10.7.7.7"]),
    );
    assert_eq!(got.ip(), ip("10.7.7.7"));
    // An empty element between commas is malformed too.
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&["203.0.113.9,,10.7.7.7"]));
    assert_eq!(got.ip(), ip("10.7.7.7"));
}

#[test]
fn non_ascii_header_values_are_ignored() {
    let p = proxies(&["10.0.0.0/8"]);
    let mut map = HeaderMap::new();
    map.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"203.0.113.9, \xff\xfe").unwrap(),
    );
    let got = p.resolve(sock("10.0.0.2:5000"), &map);
    assert_eq!(got.ip(), ip("10.0.0.2"));
}

#[test]
fn overlong_entries_are_malformed() {
    let p = proxies(&["10.0.0.0/8"]);
    let long = format!("{}1.2.3.4", "0".repeat(100));
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&[&long]));
    assert_eq!(got.ip(), ip("10.0.0.2"));
}

#[test]
fn header_count_abuse_is_bounded_by_max_hops() {
    let p = proxies(&["10.0.0.0/8"]);
    // Ten thousand trusted-looking entries: the walk gives up after `max_hops`, on a trusted
    // address, instead of reaching the forged client at the far left.
    let mut value = String::from("203.0.113.9");
    for i in 0..10_000 {
        value.push_str(&format!(", 10.0.{}.{}", (i / 250) % 250, i % 250 + 1));
    }
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&[&value]));
    assert_eq!(got.proxy_hops(), DEFAULT_MAX_HOPS);
    assert!(p.is_trusted(got.ip()));

    // The same across many header lines.
    let lines: Vec<String> = (0..500).map(|i| format!("10.1.{}.1", i % 250)).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let got = p.resolve(sock("10.0.0.2:5000"), &xff(&refs));
    assert_eq!(got.proxy_hops(), DEFAULT_MAX_HOPS);

    // A real client within the budget is still found.
    let p = p.with_max_hops(NonZeroU8::new(3).unwrap());
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["203.0.113.9, 10.0.0.8, 10.0.0.9"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.9"));
    assert_eq!(got.proxy_hops(), 3);
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &xff(&["203.0.113.9, 10.0.0.7, 10.0.0.8, 10.0.0.9"]),
    );
    assert_eq!(got.ip(), ip("10.0.0.7"));
}

#[test]
fn max_hops_is_clamped() {
    let p = TrustedProxies::none().with_max_hops(NonZeroU8::new(200).unwrap());
    assert_eq!(p.max_hops(), MAX_HOPS_LIMIT);
    assert_eq!(TrustedProxies::none().max_hops(), DEFAULT_MAX_HOPS);
}

#[test]
fn forwarded_header_basic_and_quoted_forms() {
    let p = proxies(&["10.0.0.0/8"]).with_header(ForwardedHeader::Forwarded);
    let got = p.resolve(sock("10.0.0.2:5000"), &fwd(&["for=203.0.113.9"]));
    assert_eq!(got.ip(), ip("203.0.113.9"));
    assert_eq!(got.source(), AddrSource::Forwarded);

    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &fwd(&[r#"for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.5;by=10.0.0.2"#]),
    );
    assert_eq!(got.ip(), ip("2001:db8:cafe::17"));
    assert_eq!(got.proxy_hops(), 2);

    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &fwd(&["proto=https;for=\"203.0.113.10:80\";host=example.com"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.10"));

    // Quoted-pair escapes inside quoted strings.
    let got = p.resolve(sock("10.0.0.2:5000"), &fwd(&[r#"for="203.0.113.\11""#]));
    assert_eq!(got.ip(), ip("203.0.113.11"));

    // Commas and semicolons inside quotes do not split.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &fwd(&[r#"for=203.0.113.12;ext="a,b;c""#]),
    );
    assert_eq!(got.ip(), ip("203.0.113.12"));
}

#[test]
fn forwarded_spoofing_and_malformed_elements() {
    let p = proxies(&["10.0.0.0/8"]).with_header(ForwardedHeader::Forwarded);
    // Spoofed left-most element.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &fwd(&["for=127.0.0.1", "for=203.0.113.9"]),
    );
    assert_eq!(got.ip(), ip("203.0.113.9"));
    for bad in [
        "for=unknown",
        "for=_hidden",
        "for=\"_obf\"",
        "proto=https",
        "for",
        "for=",
        "for=\"203.0.113.9",
        "for=\"203.0.113.9\\",
        "for=203.0.113.9;for=198.51.100.1",
        "for=\"[2001:db8::1]:99999\"",
        "for=\"a\"b\"",
    ] {
        let got = p.resolve(sock("10.0.0.2:5000"), &fwd(&[bad]));
        assert_eq!(got.ip(), ip("10.0.0.2"), "element {bad:?}");
    }
    // Malformed element in the middle stops at the proxy that forwarded it.
    let got = p.resolve(
        sock("10.0.0.2:5000"),
        &fwd(&["for=203.0.113.9, for=unknown, for=10.4.4.4"]),
    );
    assert_eq!(got.ip(), ip("10.4.4.4"));
}

#[test]
fn forwarded_header_count_abuse_is_bounded() {
    let p = proxies(&["10.0.0.0/8"]).with_header(ForwardedHeader::Forwarded);
    let mut value = String::from("for=203.0.113.9");
    for i in 0..5_000 {
        value.push_str(&format!(", for=10.2.{}.{}", (i / 250) % 250, i % 250 + 1));
    }
    let got = p.resolve(sock("10.0.0.2:5000"), &fwd(&[&value]));
    assert_eq!(got.proxy_hops(), DEFAULT_MAX_HOPS);
    assert!(p.is_trusted(got.ip()));
    // Only `keep` nodes are ever held.
    assert_eq!(forwarded_nodes(&value, 4).len(), 4);
}

#[test]
fn only_the_configured_header_is_read() {
    let mut map = xff(&["198.51.100.66"]);
    map.append("forwarded", HeaderValue::from_static("for=203.0.113.9"));
    let x = proxies(&["10.0.0.0/8"]);
    assert_eq!(
        x.resolve(sock("10.0.0.2:1"), &map).ip(),
        ip("198.51.100.66")
    );
    let f = x.clone().with_header(ForwardedHeader::Forwarded);
    assert_eq!(f.resolve(sock("10.0.0.2:1"), &map).ip(), ip("203.0.113.9"));
}

#[test]
fn config_builds_and_reports_bad_fields() {
    let config: ClientAddrConfig = serde_json::from_value(serde_json::json!({
        "trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.1"],
        "header": "forwarded",
        "maxHops": 4,
    }))
    .unwrap();
    let p = TrustedProxies::try_from(config).unwrap();
    assert_eq!(p.networks().len(), 3);
    assert_eq!(p.header(), ForwardedHeader::Forwarded);
    assert_eq!(p.max_hops(), 4);

    let defaults: ClientAddrConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, ClientAddrConfig::default());
    let p = TrustedProxies::try_from(defaults).unwrap();
    assert!(p.networks().is_empty());
    assert_eq!(p.header(), ForwardedHeader::XForwardedFor);

    let err = TrustedProxies::try_from(ClientAddrConfig {
        trusted_proxies: vec!["10.0.0.0/8".into(), "10.0.0.1/8".into()],
        ..ClientAddrConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "trustedProxies[1]");
    assert!(err.problem().contains("host bits"), "{err}");

    for hops in [0, 65] {
        let err = TrustedProxies::try_from(ClientAddrConfig {
            max_hops: hops,
            ..ClientAddrConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), "maxHops");
        assert!(err.fix().contains("1 to 64"));
    }

    let unknown = serde_json::from_str::<ClientAddrConfig>(r#"{"trustedProxy": []}"#);
    assert!(unknown.is_err());
}

#[test]
fn parse_node_forms() {
    assert_eq!(parse_node("192.0.2.1"), Some(ip("192.0.2.1")));
    assert_eq!(parse_node("192.0.2.1:0"), Some(ip("192.0.2.1")));
    assert_eq!(parse_node("[::1]:65535"), Some(ip("::1")));
    assert_eq!(parse_node("::1"), Some(ip("::1")));
    assert_eq!(parse_node("[::1]:65536"), None);
    assert_eq!(parse_node("[::1]:"), None);
    assert_eq!(parse_node("[]"), None);
}

#[test]
fn display_is_the_ip() {
    let c = ClientAddr::from_peer(sock("[2001:db8::5]:80"));
    assert_eq!(c.to_string(), "2001:db8::5");
}
