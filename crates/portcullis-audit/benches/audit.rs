//! The audit layer's cost on the request path, the writer's throughput to a file with
//! fsync per checkpoint, and `verify`'s speed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    clippy::field_reassign_with_default
)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use portcullis_audit::verify::verify;
use portcullis_audit::{
    Audit, AuditConfig, AuditLayer, FileSink, FileSinkConfig, FsyncPolicy, Signer, Sink,
    SinkConfig, Verifier, private_key_pem,
};
use portcullis_core::{AuthMethod, ClientAddr, Principal, WafVerdict};
use tower::{Layer, Service};

/// Polls a future that is expected to be ready without waiting (the services here are).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Reads a body to its end.
fn drain<B: Body + Unpin>(mut body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return,
            Poll::Ready(Some(_)) => {}
            Poll::Pending => std::thread::yield_now(),
        }
    }
}

fn request() -> Request<Full<Bytes>> {
    let mut r = Request::post("/v1/chat/completions?stream=false")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap();
    r.extensions_mut()
        .insert(ClientAddr::from_peer("192.0.2.7:40000".parse().unwrap()));
    r
}

async fn upstream<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    let p = Principal::builder("alice", AuthMethod::Jwt)
        .tenant("acme")
        .build()
        .unwrap();
    r.extensions_mut().insert(p);
    let mut v = WafVerdict::new(1).unwrap();
    v.record_match(942_100);
    r.extensions_mut().insert(v);
    Ok(r)
}

/// A file sink that holds its first write until the gate opens.
struct Gated {
    inner: FileSink,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink for Gated {
    fn write_line(&mut self, seq: u64, line: &[u8]) -> std::io::Result<()> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        self.inner.write_line(seq, line)
    }

    fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        self.inner.flush(sync)
    }
}

fn config(dir: &std::path::Path) -> AuditConfig {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, private_key_pem(&Signer::generate_pkcs8().unwrap())).unwrap();
    let mut c = AuditConfig::default();
    c.sink = SinkConfig::File(FileSinkConfig::new(dir.join("log")));
    c.fsync = FsyncPolicy::PerCheckpoint;
    c.checkpoint.signing_key = Some(key);
    c.queue.capacity = 1 << 20;
    c
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (audit, task) = Audit::start(config(dir.path())).unwrap();

    // Only the exchange is timed; between exchanges the bench waits 20 µs, so the writer
    // (on the other core) keeps up, as it must at any sustained load, and what is measured is
    // what the request's own thread spends: capture, queueing and waking the writer.
    let paced = |b: &mut criterion::Bencher<'_>, exchange: &mut dyn FnMut()| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                exchange();
                total += start.elapsed();
                let pause = Instant::now();
                while pause.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
            }
            total
        })
    };
    let mut g = c.benchmark_group("request_path");
    let mut bare = tower::service_fn(upstream::<Full<Bytes>>);
    g.bench_function("bare", |b| {
        paced(b, &mut || {
            let response = now(bare.call(request())).unwrap();
            drain(response.into_body());
        })
    });
    let mut audited = AuditLayer::new(audit.clone()).layer(tower::service_fn(upstream));
    g.bench_function("audit_layer", |b| {
        paced(b, &mut || {
            let response = now(audited.call(request())).unwrap();
            drain(response.into_body());
        })
    });
    g.finish();
    rt.block_on(audit.flush());

    let stats = rt.block_on(task.shutdown());
    assert_eq!(stats.dropped, 0);

    // The writer alone: N events wait in the queue while the sink is held shut, then the
    // time from opening it until all N are written (sealed, hashed, signed every 1,000,
    // written, fsynced at each checkpoint) to a file.
    let mut g = c.benchmark_group("writer");
    const N: u64 = 200_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    let log_dir = tempfile::tempdir().unwrap();
    let runs = AtomicUsize::new(0);
    g.bench_function("file_fsync_per_checkpoint", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let run = log_dir
                    .path()
                    .join(format!("run-{}", runs.fetch_add(1, Ordering::Relaxed)));
                let config = config(&run);
                let SinkConfig::File(files) = &config.sink else {
                    unreachable!()
                };
                let gate = Arc::new((Mutex::new(false), Condvar::new()));
                let sink = Gated {
                    inner: FileSink::new(files.clone(), true).unwrap(),
                    gate: gate.clone(),
                };
                let (audit, task) = Audit::with_sink(config, Box::new(sink)).unwrap();
                let mut service = AuditLayer::new(audit.clone()).layer(tower::service_fn(upstream));
                for _ in 0..N {
                    let response = now(service.call(request())).unwrap();
                    drain(response.into_body());
                }
                let start = Instant::now();
                *gate.0.lock().unwrap() = true;
                gate.1.notify_all();
                rt.block_on(audit.flush());
                total += start.elapsed();
                rt.block_on(task.shutdown());
            }
            total
        })
    });
    g.finish();

    // `verify` over the first writer run's log (200,000 requests).
    let run = log_dir.path().join("run-0");
    let files = portcullis_audit::verify::files_in(&run.join("log")).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let signer = Signer::from_pem_file(&run.join("key.pem")).unwrap();
    let verifier = Verifier::from_raw(signer.public_key()).unwrap();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.bench_function("log", |b| {
        b.iter(|| {
            let report = verify(&files, Some(&verifier)).unwrap();
            assert!(
                report.finding.is_none(),
                "{:?} {:?}",
                report.finding,
                report.notes
            );
            black_box(report)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
