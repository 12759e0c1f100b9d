//! `portcullis crd`, and the `waf` and `audit` subcommands delegating to the crates' tools.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn portcullis(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn subcommands() {
    let (code, out) = portcullis(&["crd"]);
    assert_eq!(code, 0);
    assert!(out.contains("kind: CustomResourceDefinition"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub"));
    let (code, out) = portcullis(&[
        "audit",
        "keygen",
        "--private",
        private.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(public.exists());
    // The audit tool's own usage error and exit code.
    let (code, out) = portcullis(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("--public-key is required"), "{out}");
    // The WAF tool's.
    let (code, out) = portcullis(&["waf", "eval", "--rules"]);
    assert_eq!(code, 2, "{out}");
}
