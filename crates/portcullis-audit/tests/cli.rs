//! The `portcullis-audit` command: keygen, then verify's verdicts and exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;
use portcullis_audit::{Audit, AuditConfig};

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-audit"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn keygen_then_verify() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub");
    let (code, out) = cli(&[
        "keygen",
        "--private",
        private.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    // It never overwrites a key.
    let (code, _) = cli(&[
        "keygen",
        "--private",
        private.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);

    let mut config: AuditConfig = file_config(dir.path(), &private);
    config.checkpoint.every_records = 5;
    let (audit, task) = Audit::start(config).unwrap();
    for i in 0..12 {
        send(&audit, get(&format!("/x/{i}"))).await.unwrap();
    }
    task.shutdown().await;
    let log = dir.path().join("log");
    let (code, out) = cli(&[
        "verify",
        log.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("OK: 1 files,") && out.contains("12 requests"),
        "{out}"
    );
    let (code, out) = cli(&[
        "verify",
        log.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["requests"], 12);

    let file = &log_files(dir.path())[0];
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, text.replacen("/x/3", "/x/9", 1)).unwrap();
    let (code, out) = cli(&[
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("MODIFIED: record"), "{out}");
    std::fs::write(file, &text[..text.len() - 10]).unwrap();
    let (code, out) = cli(&[
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("TRUNCATED"), "{out}");
    let (code, _) = cli(&["verify", file.to_str().unwrap()]);
    assert_eq!(code, 64);
}
