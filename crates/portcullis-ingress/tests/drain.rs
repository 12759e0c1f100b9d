//! SIGTERM on the binary: it stops accepting connections, lets the stream in flight finish,
//! and exits 0.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_stream_in_flight() {
    let upstream = portcullis_test_util::FakeUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = portcullis_test_util::loopback_backend_yaml("ml", "mock", upstream.addr().port())
        + "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: sse, namespace: ml}\n\
           spec:\n  ingressClassName: portcullis\n  defaultBackend: {service: {name: mock, port: {number: 80}}}\n";
    common::write(dir.path(), &yaml);
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--manifests", dir.path().to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--drain",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (addr, _) = common::serving_addresses(&line);

    // A stream of 40 events, 25 ms apart (about a second).
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /sse?events=40&interval_ms=25 HTTP/1.1\r\nhost: any\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    got.extend_from_slice(&buf[..n]);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after SIGTERM");
    // The stream in flight runs to its end.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stream stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        // The last chunk of the chunked body: the response is complete.
        if got.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(
        text.contains(r#"data: {"n":39}"#) && got.ends_with(b"\r\n0\r\n\r\n"),
        "after {:?}: {text}\n{stderr}",
        signalled.elapsed()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(15));
}
