//! Shared helpers of the audit tests.
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis_audit::{
    Audit, AuditConfig, AuditLayer, CountedBody, FileSinkConfig, Signer, Sink, SinkConfig,
    Verifier, private_key_pem, public_key_pem,
};
use portcullis_core::{
    AuthMethod, KeyKind, Principal, Problem, RateLimitDecision, Reason, RouteInfo, TokenUsage,
    UsageSource, WafAction, WafVerdict,
};
use tower::{Layer, Service, ServiceExt};

/// A fresh Ed25519 key pair in `dir`: (private PEM path, verifier).
pub fn keys(dir: &Path) -> (PathBuf, Verifier) {
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    let signer = Signer::from_pkcs8(&pkcs8).unwrap();
    let private = dir.join("audit-key.pem");
    std::fs::write(&private, private_key_pem(&pkcs8)).unwrap();
    let public = dir.join("audit-key.pub");
    std::fs::write(&public, public_key_pem(signer.public_key())).unwrap();
    (private, Verifier::from_file(&public).unwrap())
}

/// Files in `dir/log`, checkpoints every 10 records, signed with `key`.
pub fn file_config(dir: &Path, key: &Path) -> AuditConfig {
    let mut config = AuditConfig {
        sink: SinkConfig::File(FileSinkConfig::new(dir.join("log"))),
        ..AuditConfig::default()
    };
    config.checkpoint.every_records = 10;
    config.checkpoint.signing_key = Some(key.to_path_buf());
    config
}

pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    portcullis_audit::verify::files_in(&dir.join("log")).unwrap()
}

/// Every line of the log, parsed.
pub fn records(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

pub fn requests(files: &[PathBuf]) -> Vec<serde_json::Value> {
    records(files)
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect()
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// An upstream that answers by path, leaving the decisions other layers would leave.
pub async fn upstream(
    req: Request<CountedBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Error> {
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    match path.as_str() {
        "/boom" => Err("upstream exploded".into()),
        "/blocked" => {
            let mut verdict = WafVerdict::new(1).unwrap();
            verdict.record_match(100_100);
            verdict.escalate(WafAction::Block);
            let mut r: Response<Full<Bytes>> = Problem::new(Reason::WafBlocked).into_response();
            r.extensions_mut().insert(verdict);
            Ok(r)
        }
        "/limited" => {
            let mut r: Response<Full<Bytes>> = Problem::new(Reason::RateLimited).into_response();
            r.extensions_mut().insert(
                RateLimitDecision::limited(
                    "per-client",
                    KeyKind::ClientIp,
                    10,
                    Duration::from_secs(60),
                    Duration::from_secs(6),
                )
                .unwrap(),
            );
            Ok(r)
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
            let principal = Principal::builder("alice@example.com", AuthMethod::Jwt)
                .issuer("https://idp.example.com")
                .tenant("acme")
                .key_id("kid-1")
                .build()
                .unwrap();
            let ext = r.extensions_mut();
            ext.insert(principal);
            ext.insert(
                RateLimitDecision::allowed(
                    "per-client",
                    KeyKind::ClientIp,
                    10,
                    9,
                    Duration::from_secs(60),
                )
                .unwrap(),
            );
            ext.insert(TokenUsage::new(12, 30, UsageSource::Reported));
            ext.insert(
                RouteInfo::new("chat")
                    .unwrap()
                    .with_namespace("ml")
                    .unwrap()
                    .with_model("gpt-4o")
                    .unwrap(),
            );
            let mut verdict = WafVerdict::new(1).unwrap();
            verdict.record_match(942_100);
            verdict.escalate(WafAction::Detect);
            ext.insert(verdict);
            Ok(r)
        }
    }
}

/// Sends `req` through the audit layer around [`upstream`]; the body is read to its end.
pub async fn send(
    audit: &Audit,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Bytes>, ()), Error> {
    let service = AuditLayer::new(audit.clone()).layer(tower::service_fn(upstream));
    let response = service.oneshot(req).await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, bytes), ()))
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "api.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A sink in memory that can be made to fail or to stall.
#[derive(Clone, Default)]
pub struct TestSink {
    pub out: Arc<Mutex<Vec<u8>>>,
    buf: Vec<u8>,
    pub fail: Arc<AtomicBool>,
    /// While false, writes wait.
    pub gate: Arc<(Mutex<bool>, Condvar)>,
}

impl TestSink {
    pub fn open() -> Self {
        let s = Self::default();
        *s.gate.0.lock().unwrap() = true;
        s
    }

    pub fn set_gate(&self, open: bool) {
        *self.gate.0.lock().unwrap() = open;
        self.gate.1.notify_all();
    }

    /// The lines written so far, in a file (for `verify`).
    pub fn to_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("memory.jsonl");
        std::fs::write(&p, &*self.out.lock().unwrap()).unwrap();
        p
    }
}

impl Sink for TestSink {
    fn write_line(&mut self, _seq: u64, line: &[u8]) -> io::Result<()> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        self.buf.extend_from_slice(line);
        Ok(())
    }

    fn flush(&mut self, _sync: bool) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        self.out.lock().unwrap().append(&mut self.buf);
        Ok(())
    }
}

/// A service stack for concurrent use.
pub fn stack(
    audit: Audit,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<portcullis_audit::AuditBody<Full<Bytes>>>,
    Error = Error,
    Future = impl std::future::Future<
        Output = Result<Response<portcullis_audit::AuditBody<Full<Bytes>>>, Error>,
    > + Send,
> + Clone
+ Send {
    AuditLayer::new(audit).layer(tower::service_fn(upstream))
}
