//! The audit layer end to end: records, redaction, tamper evidence, rotation, volume,
//! back-pressure and sink failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use portcullis_audit::verify::{Finding, verify};
use portcullis_audit::{
    Audit, AuditConfig, OnFull, OnSinkError, PseudonymizeConfig, QueryPolicy, REQUEST_ID,
};
use portcullis_core::ClientAddr;
use tower::{Service, ServiceExt};

#[tokio::test]
async fn one_record_per_request_with_every_decision_and_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let (key, verifier) = keys(dir.path());
    let (audit, task) = Audit::start(file_config(dir.path(), &key)).unwrap();
    let mut req = Request::get("/v1/models?q=shoes&api_key=sk-secret-1")
        .header("host", "api.example.com")
        .header("authorization", "Bearer tok-secret-2")
        .header("cookie", "session=cookie-secret-3")
        .header("x-api-key", "key-secret-4")
        .header("user-agent", "test-agent/1.0")
        .header(REQUEST_ID, "req-123")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    req.extensions_mut().insert(ClientAddr::from_peer(peer));
    let (ok, ()) = send(&audit, req).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()[REQUEST_ID], "req-123");
    let (blocked, ()) = send(&audit, get("/blocked")).await.unwrap();
    assert_eq!(blocked.status(), 403);
    let generated = blocked.headers()[REQUEST_ID].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    let (limited, ()) = send(&audit, get("/limited")).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(send(&audit, get("/boom")).await.is_err());
    // An exchange abandoned mid-body is recorded too.
    let service = stack(audit.clone());
    let response = service.oneshot(get("/v1/models")).await.unwrap();
    drop(response);
    let stats = task.shutdown().await;
    assert_eq!(stats.dropped, 0);

    let files = log_files(dir.path());
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for secret in [
        "sk-secret-1",
        "tok-secret-2",
        "cookie-secret-3",
        "key-secret-4",
    ] {
        assert!(!text.contains(secret), "{secret} was written");
    }
    let reqs = requests(&files);
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    let first = &reqs[0];
    assert_eq!(first["request_id"], "req-123");
    assert_eq!(first["http"]["method"], "GET");
    assert_eq!(first["http"]["path"], "/v1/models");
    assert_eq!(first["http"]["query"], "q=***&api_key=***");
    assert_eq!(first["http"]["headers"]["user-agent"], "test-agent/1.0");
    assert_eq!(first["http"]["status"], 200);
    assert_eq!(first["client"]["ip"], "192.0.2.7");
    assert_eq!(first["principal"]["subject"], "alice@example.com");
    assert_eq!(first["principal"]["method"], "jwt");
    assert_eq!(first["principal"]["tenant"], "acme");
    assert_eq!(first["principal"]["key_id"], "kid-1");
    assert_eq!(first["route"]["name"], "chat");
    assert_eq!(first["model"], "gpt-4o");
    assert_eq!(first["waf"]["rules"][0], 942_100);
    assert_eq!(first["ratelimit"]["remaining"], 9);
    assert_eq!(first["tokens"]["total"], 42);
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], 11);
    assert_eq!(first["completion"], "complete");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(reqs[1]["request_id"], generated.as_str());
    assert_eq!(reqs[1]["rejection"]["reason"], "waf.blocked");
    assert_eq!(reqs[1]["rejection"]["layer"], "waf");
    assert_eq!(reqs[1]["waf"]["action"], "block");
    assert_eq!(reqs[2]["http"]["status"], 429);
    assert_eq!(reqs[2]["ratelimit"]["outcome"], "limited");
    assert_eq!(reqs[3]["completion"], "error");
    assert_eq!(reqs[4]["completion"], "aborted");
    // Shut down cleanly: every record under the final signed checkpoint.
    let report = verify(&files, Some(&verifier)).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.requests, 5);
}

#[tokio::test]
async fn redaction_and_pseudonyms() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keys(dir.path());
    let mut config = file_config(dir.path(), &key);
    // Credential headers cannot be chosen, however they are spelled.
    config.redaction.headers.push("Cookie".into());
    assert!(Audit::start(config.clone()).is_err());
    config.redaction.headers.pop();
    config.redaction.query = QueryPolicy::Keep;
    config.redaction.mask_headers.push("x-forwarded-for".into());
    let hmac = dir.path().join("hmac.key");
    std::fs::write(&hmac, [7u8; 32]).unwrap();
    config.redaction.pseudonymize = Some(PseudonymizeConfig {
        key_file: hmac,
        subject: true,
        client_ip: true,
    });
    let (audit, task) = Audit::start(config).unwrap();
    let mut req = Request::get("/v1/models?q=shoes&token=tok-secret")
        .header("x-forwarded-for", "198.51.100.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr::from_peer("192.0.2.7:40000".parse().unwrap()));
    send(&audit, req).await.unwrap();
    task.shutdown().await;
    let files = log_files(dir.path());
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for clear in [
        "tok-secret",
        "alice@example.com",
        "192.0.2.7",
        "198.51.100.1",
    ] {
        assert!(!text.contains(clear), "{clear} was written");
    }
    let r = &requests(&files)[0];
    assert_eq!(r["http"]["query"], "q=shoes&token=***");
    assert_eq!(r["http"]["headers"]["x-forwarded-for"], "***");
    assert!(
        r["principal"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("hmac:")
    );
    assert!(r["client"]["ip"].as_str().unwrap().starts_with("hmac:"));
}

/// A verified log of 30 requests; its lines.
async fn thirty(
    dir: &std::path::Path,
) -> (std::path::PathBuf, Vec<String>, portcullis_audit::Verifier) {
    let (key, verifier) = keys(dir);
    let (audit, task) = Audit::start(file_config(dir, &key)).unwrap();
    for i in 0..30 {
        send(&audit, get(&format!("/v1/items/{i}"))).await.unwrap();
    }
    task.shutdown().await;
    let files = log_files(dir);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines = text.lines().map(str::to_owned).collect();
    (files[0].clone(), lines, verifier)
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn verify_tells_tampering_from_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (file, lines, verifier) = thirty(dir.path()).await;
    let check = |lines: &[String], trailing_newline: bool| {
        let mut text = lines.join("\n");
        if trailing_newline {
            text.push('\n');
        }
        std::fs::write(&file, text).unwrap();
        verify(std::slice::from_ref(&file), Some(&verifier)).unwrap()
    };
    let clean = check(&lines, true);
    assert!(clean.is_clean(), "{clean:#?}");
    assert_eq!(clean.requests, 30);
    assert!(clean.checkpoints >= 3);

    // A flipped byte.
    let mut flipped = lines.clone();
    flipped[7] = flipped[7].replacen("/v1/items/", "/v1/itens/", 1);
    let seq7 = seq_of(&lines[7]);
    let r = check(&flipped, true);
    assert_eq!(
        r.finding,
        Some(Finding::Modified {
            seq: seq7,
            at: portcullis_audit::verify::Place {
                file: file.clone(),
                line: 8
            }
        })
    );

    // A deleted line.
    let mut deleted = lines.clone();
    deleted.remove(12);
    let seq12 = seq_of(&lines[12]);
    let r = check(&deleted, true);
    assert!(
        matches!(r.finding, Some(Finding::Deleted { from, to, .. }) if from == seq12 && to == seq12),
        "{r:#?}"
    );

    // An inserted line (a copy of an earlier record).
    let mut inserted = lines.clone();
    inserted.insert(15, lines[3].clone());
    let r = check(&inserted, true);
    assert!(
        matches!(r.finding, Some(Finding::Inserted { seq, .. }) if seq == seq_of(&lines[3])),
        "{r:#?}"
    );

    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(20, 21);
    let r = check(&swapped, true);
    assert!(
        matches!(r.finding, Some(Finding::Reordered { seq, expected, .. })
            if seq == seq_of(&lines[21]) && expected == seq_of(&lines[20])),
        "{r:#?}"
    );

    // A truncated last line: a crash, at the exact record.
    let mut torn = lines.clone();
    let last = torn.pop().unwrap();
    let last_seq = seq_of(&last);
    torn.push(last[..last.len() / 2].to_owned());
    let r = check(&torn, false);
    assert_eq!(r.finding, None);
    assert_eq!(r.truncated_at, Some(last_seq));

    // The last two checkpoints removed: the chain holds, but the tail is unsigned.
    let mut unsigned = lines.clone();
    unsigned.truncate(lines.len() - 2);
    let r = check(&unsigned, true);
    assert_eq!(r.finding, None);
    assert_eq!(r.unsigned_tail, 10, "{r:#?}");

    // Another key: the checkpoints do not verify.
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_key) = keys(other_dir.path());
    let r = verify(std::slice::from_ref(&file), Some(&other_key)).unwrap();
    assert!(
        matches!(r.finding, Some(Finding::BadSignature { .. })),
        "{r:#?}"
    );
}

#[tokio::test]
async fn rotation_and_restarts_keep_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (key, verifier) = keys(dir.path());
    let mut config = file_config(dir.path(), &key);
    if let portcullis_audit::SinkConfig::File(f) = &mut config.sink {
        f.max_bytes = 4096;
    }
    for run in 0..2 {
        let (audit, task) = Audit::start(config.clone()).unwrap();
        for i in 0..40 {
            send(&audit, get(&format!("/run/{run}/{i}"))).await.unwrap();
        }
        task.shutdown().await;
    }
    let files = log_files(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    let report = verify(&files, Some(&verifier)).unwrap();
    assert!(report.is_clean() && report.from_genesis, "{report:#?}");
    assert_eq!(report.requests, 80);
    let starts: Vec<_> = records(&files)
        .into_iter()
        .filter(|r| r["kind"] == "start")
        .map(|r| r["chain"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(starts, ["new", "continued"]);
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4096 + 2048, "{f:?}");
    }
    // With the oldest files gone, what is left still verifies from its first record.
    for old in files.iter().take(2) {
        std::fs::remove_file(old).unwrap();
    }
    let report = verify(&log_files(dir.path()), Some(&verifier)).unwrap();
    assert!(
        report.finding.is_none() && !report.from_genesis,
        "{report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_concurrent_requests_all_recorded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (key, verifier) = keys(dir.path());
    let mut config = file_config(dir.path(), &key);
    config.checkpoint.every_records = 1000;
    config.queue.capacity = 1024;
    let (audit, task) = Audit::start(config).unwrap();
    let mut handles = Vec::new();
    for t in 0..8 {
        let mut service = stack(audit.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..12_500 {
                let req = Request::get(format!("/t/{t}/{i}"))
                    .header(REQUEST_ID, format!("t{t}-{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = service.ready().await.unwrap().call(req).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let stats = task.shutdown().await;
    assert_eq!(stats.dropped, 0);
    let files = log_files(dir.path());
    let report = verify(&files, Some(&verifier)).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.requests, 100_000);
    let mut ids: Vec<String> = requests(&files)
        .into_iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_blocks_without_loss_or_drops_with_a_gap_record() {
    for on_full in [OnFull::Block, OnFull::Drop] {
        let dir = tempfile::tempdir().unwrap();
        let (key, verifier) = keys(dir.path());
        let mut config = AuditConfig::default();
        config.checkpoint.signing_key = Some(key);
        config.queue.capacity = 4;
        config.queue.on_full = on_full;
        let sink = TestSink::open();
        sink.set_gate(false);
        let (audit, task) = Audit::with_sink(config, Box::new(sink.clone())).unwrap();
        let mut handles = Vec::new();
        for i in 0..50 {
            let audit = audit.clone();
            handles.push(tokio::spawn(async move {
                send(&audit, get(&format!("/q/{i}"))).await.unwrap();
            }));
        }
        match on_full {
            // Held at the body's end until there is room.
            OnFull::Block => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let finished = handles.iter().filter(|h| h.is_finished()).count();
                assert!(finished < 50, "{finished} finished");
            }
            // Never held: all finish while the writer is still stuck.
            OnFull::Drop => wait_for(|| handles.iter().all(|h| h.is_finished())).await,
        }
        sink.set_gate(true);
        for h in handles {
            h.await.unwrap();
        }
        // One more, once the queue has drained: the gap record comes before it.
        audit.flush().await;
        send(&audit, get("/after")).await.unwrap();
        let stats = task.shutdown().await;
        let file = sink.to_file(dir.path());
        let report = verify(std::slice::from_ref(&file), Some(&verifier)).unwrap();
        assert!(report.is_clean(), "{report:#?}");
        match on_full {
            OnFull::Block => {
                assert_eq!(stats.dropped, 0);
                assert_eq!(report.requests, 51);
                assert_eq!(report.gaps, 0);
            }
            OnFull::Drop => {
                assert!(stats.dropped > 0);
                assert_eq!(report.gaps, 1);
                assert_eq!(report.dropped, stats.dropped);
                assert_eq!(report.requests + report.dropped, 51);
            }
        }
    }
}

#[tokio::test]
async fn a_failing_sink_fails_closed_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (key, verifier) = keys(dir.path());
    let mut config = AuditConfig::default();
    config.checkpoint.signing_key = Some(key);
    let sink = TestSink::open();
    let (audit, task) = Audit::with_sink(config.clone(), Box::new(sink.clone())).unwrap();
    assert_eq!(send(&audit, get("/one")).await.unwrap().0.status(), 200);
    audit.flush().await;
    sink.fail.store(true, Ordering::SeqCst);
    // This record meets the failure; requests go on until the writer notices.
    assert_eq!(send(&audit, get("/two")).await.unwrap().0.status(), 200);
    wait_for(|| !audit.stats().healthy).await;
    let (refused, ()) = send(&audit, get("/three")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = String::from_utf8(refused.body().to_vec()).unwrap();
    assert!(body.contains("audit.unavailable"), "{body}");
    sink.fail.store(false, Ordering::SeqCst);
    wait_for(|| audit.stats().healthy).await;
    assert_eq!(send(&audit, get("/four")).await.unwrap().0.status(), 200);
    let stats = task.shutdown().await;
    assert!(stats.write_errors > 0);
    let file = sink.to_file(dir.path());
    let report = verify(std::slice::from_ref(&file), Some(&verifier)).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    let paths: Vec<String> = requests(std::slice::from_ref(&file))
        .iter()
        .map(|r| format!("{} {}", r["http"]["path"], r["http"]["status"]))
        .collect();
    assert_eq!(
        paths,
        [
            "\"/one\" 200",
            "\"/two\" 200",
            "\"/three\" 503",
            "\"/four\" 200"
        ]
    );

    // Failing open: requests go on, errors are counted.
    config.on_sink_error = OnSinkError::FailOpen;
    let sink = TestSink::open();
    let (audit, task) = Audit::with_sink(config, Box::new(sink.clone())).unwrap();
    sink.fail.store(true, Ordering::SeqCst);
    send(&audit, get("/a")).await.unwrap();
    wait_for(|| !audit.stats().healthy).await;
    assert_eq!(send(&audit, get("/b")).await.unwrap().0.status(), 200);
    assert!(audit.stats().write_errors > 0);
    sink.fail.store(false, Ordering::SeqCst);
    task.shutdown().await;
    let file = sink.to_file(dir.path());
    assert_eq!(
        verify(std::slice::from_ref(&file), None).unwrap().requests,
        2
    );
}

async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}
