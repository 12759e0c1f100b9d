//! Helpers shared by the ingress's integration tests.
#![allow(dead_code, reason = "each test binary uses some of the helpers")]

use std::path::Path;
use std::time::Duration;

use portcullis_core::TrustedProxies;
use portcullis_ingress::server::{Options, Source};

/// Options serving the manifests in `dir` on ephemeral loopback ports (plain and admin; no
/// TLS, no audit), polling every 50 ms, with generous timeouts; tests change what they test.
pub(crate) fn options(dir: &Path) -> Options {
    Options {
        source: Source::Manifests(dir.to_owned()),
        listen: "127.0.0.1:0".parse().ok(),
        tls_listen: None,
        admin: "127.0.0.1:0".parse().ok(),
        upstream_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        drain: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        trusted_proxies: TrustedProxies::default(),
        audit: None,
    }
}

/// Writes `text` as the directory's manifests: whole, then renamed, so the watcher never
/// reads half a file.
pub(crate) fn write(dir: &Path, text: &str) {
    let tmp = dir.join(".routes.yaml.tmp");
    let _ = std::fs::write(&tmp, text);
    let _ = std::fs::rename(&tmp, dir.join("routes.yaml"));
}

/// The plain and admin addresses in the binary's first line, "portcullis serving on
/// http://ADDR (admin http://ADMIN)".
pub(crate) fn serving_addresses(line: &str) -> (String, String) {
    let mut parts = line.split("http://").skip(1);
    let addr = parts
        .next()
        .and_then(|p| p.split(' ').next())
        .unwrap_or_default()
        .to_owned();
    let admin = parts
        .next()
        .map(|p| p.trim_end_matches([')', '\n']))
        .unwrap_or_default()
        .to_owned();
    (addr, admin)
}
