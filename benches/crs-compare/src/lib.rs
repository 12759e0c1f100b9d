//! The three requests of the CRS benchmark, and a runner for each engine.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use portcullis_waf::crs::Crs;
use portcullis_waf::{Exchange, ParseOptions, RequestHead};

#[path = "../../../crates/portcullis-waf/benches/common/crs_requests.rs"]
mod crs_requests;

pub use crs_requests::{Req, requests};

/// Runs `req` through portcullis-waf's CRS; the status when it was blocked.
pub fn portcullis(crs: &Crs, req: &Req) -> Option<u16> {
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_bytes()))
        .collect();
    let head = RequestHead {
        method: req.method,
        target: &req.target,
        protocol: "HTTP/1.1",
        headers: &headers,
    };
    let ex = Exchange::from_head(&head, &req.body, ParseOptions::default());
    crs.evaluate_request(&ex, "203.0.113.9").status
}

/// Runs `req` through zentinel-modsec; the status when it intervened.
pub fn zentinel(modsec: &zentinel_modsec::ModSecurity, req: &Req) -> Option<u16> {
    let mut tx = modsec.new_transaction();
    tx.process_uri(&req.target, req.method, "HTTP/1.1").ok()?;
    for (k, v) in &req.headers {
        tx.add_request_header(k, v).ok()?;
    }
    tx.process_request_headers().ok()?;
    if !req.body.is_empty() {
        tx.append_request_body(&req.body).ok()?;
    }
    tx.process_request_body().ok()?;
    tx.intervention().map(|i| i.status)
}

/// The CRS directory beside the repository.
pub fn crs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs")
}

/// zentinel-modsec loaded with the same CRS set-up: an entry file including
/// `crs-setup.conf.example` and `rules/*.conf`, engine on, request bodies on.
pub fn zentinel_engine(dir: &Path) -> zentinel_modsec::ModSecurity {
    let entry = std::env::temp_dir().join("portcullis-crs-compare.conf");
    let text = format!(
        "SecRuleEngine On\nSecRequestBodyAccess On\nInclude {}\nInclude {}/rules/*.conf\n",
        dir.join("crs-setup.conf.example").display(),
        dir.display()
    );
    std::fs::write(&entry, text).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
    zentinel_modsec::ModSecurity::from_file(entry.to_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("zentinel-modsec cannot load the CRS: {e}"))
}
