//! `portcullis-audit`: verify an audit log, or make a signing key.
//!
//! ```text
//! portcullis-audit verify FILE|DIR... --public-key KEY [--json]
//! portcullis-audit keygen --private FILE --public FILE
//! ```
//!
//! `verify` exits 0 when the log verified and every record is under a signed checkpoint, 1
//! when it found tampering (a modified, inserted, deleted or reordered record, a bad
//! signature, a malformed line), 2 when the last record was cut off (a crash), 3 when only the
//! records after the last checkpoint are unsigned, 64 on a usage error and 66 when a file
//! cannot be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::verify::{Report, files_in, verify};
use crate::{Signer, Verifier, private_key_pem, public_key_pem};

const USAGE: &str = "usage:\n  portcullis-audit verify FILE|DIR... --public-key KEY [--json]\n  portcullis-audit keygen --private FILE --public FILE";

/// Runs the command with `args` (without the program name), as the `portcullis-audit` binary
/// and `portcullis audit` do.
pub fn main(args: Vec<String>) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("verify") => run_verify(args.get(1..).unwrap_or_default()),
        Some("keygen") => run_keygen(args.get(1..).unwrap_or_default()),
        _ => usage("expected `verify` or `keygen`"),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("portcullis-audit: {problem}\n{USAGE}");
    ExitCode::from(64)
}

fn run_verify(args: &[String]) -> ExitCode {
    let mut paths = Vec::new();
    let mut key = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--public-key" => match it.next() {
                Some(k) => key = Some(PathBuf::from(k)),
                None => return usage("--public-key needs a file"),
            },
            "--json" => json = true,
            other if other.starts_with("--") => return usage(&format!("unknown option {other}")),
            other => paths.push(PathBuf::from(other)),
        }
    }
    let Some(key) = key else {
        return usage("--public-key is required (the checkpoints' Ed25519 public key)");
    };
    if paths.is_empty() {
        return usage("name the log files or their directory");
    }
    let key = match Verifier::from_file(&key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("portcullis-audit: {}: {e}", key.display());
            return ExitCode::from(66);
        }
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match files_in(&p) {
                Ok(mut f) => files.append(&mut f),
                Err(e) => {
                    eprintln!("portcullis-audit: {}: {e}", p.display());
                    return ExitCode::from(66);
                }
            }
        } else {
            files.push(p);
        }
    }
    let started = Instant::now();
    let report = match verify(&files, Some(&key)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-audit: {e}");
            return ExitCode::from(66);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let code = exit_code(&report);
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "ok": report.finding.is_none(),
            "finding": report.finding.as_ref().map(ToString::to_string),
            "truncated_at": report.truncated_at,
            "unsigned_tail": report.unsigned_tail,
            "files": report.files,
            "records": report.records,
            "requests": report.requests,
            "checkpoints": report.checkpoints,
            "gaps": report.gaps,
            "dropped": report.dropped,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "from_genesis": report.from_genesis,
            "bytes": report.bytes,
            "mb_per_s": mb_per_s(report.bytes, secs),
            "notes": report.notes,
            "key_id": key.key_id(),
        });
        let _ = writeln!(out, "{value}");
        return ExitCode::from(code);
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(finding) = &report.finding {
        let _ = writeln!(out, "{finding}");
        let _ = writeln!(
            out,
            "{} records verified before it (seq {}..{})",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0)
        );
        return ExitCode::from(code);
    }
    if let Some(seq) = report.truncated_at {
        let _ = writeln!(
            out,
            "TRUNCATED: the last line is cut off: record {seq} was being written when the writer stopped (a crash); everything before it verified"
        );
    }
    if report.unsigned_tail > 0 {
        let _ = writeln!(
            out,
            "UNSIGNED TAIL: the last {} records follow the last signed checkpoint: their chain holds but no signature covers them yet",
            report.unsigned_tail
        );
    }
    let _ = writeln!(
        out,
        "{}: {} files, {} records ({} requests, {} signed checkpoints, {} gap records for {} dropped events), seq {}..{}{}, key {}; {} bytes at {:.0} MB/s",
        if code == 0 { "OK" } else { "VERIFIED" },
        report.files,
        report.records,
        report.requests,
        report.checkpoints,
        report.gaps,
        report.dropped,
        report.first_seq.unwrap_or(0),
        report.last_seq.unwrap_or(0),
        if report.from_genesis {
            " from the chain's start"
        } else {
            " (anchored at the first record: earlier files are not here)"
        },
        key.key_id(),
        report.bytes,
        mb_per_s(report.bytes, secs),
    );
    ExitCode::from(code)
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

fn exit_code(report: &Report) -> u8 {
    if report.finding.is_some() {
        1
    } else if report.truncated_at.is_some() {
        2
    } else if report.unsigned_tail > 0 {
        3
    } else {
        0
    }
}

fn run_keygen(args: &[String]) -> ExitCode {
    let (mut private, mut public) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--private" => private = it.next().map(PathBuf::from),
            "--public" => public = it.next().map(PathBuf::from),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let (Some(private), Some(public)) = (private, public) else {
        return usage("keygen needs --private FILE and --public FILE");
    };
    let result = (|| -> std::io::Result<String> {
        let pkcs8 = Signer::generate_pkcs8()?;
        let signer = Signer::from_pkcs8(&pkcs8)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&private)?
            .write_all(private_key_pem(&pkcs8).as_bytes())?;
        std::fs::write(&public, public_key_pem(signer.public_key()))?;
        Ok(signer.key_id().to_owned())
    })();
    match result {
        Ok(id) => {
            println!(
                "wrote {} (private, mode 0600) and {} (public); key id {id}",
                private.display(),
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis-audit: {e}");
            ExitCode::from(66)
        }
    }
}
