//! The local keyed check with 1,000,000 keys present, and the memory each IPv4 key costs.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a bench with broken fixtures should stop at once"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use portcullis_ratelimit::{DefaultClock, Key, KeySpec, RateLimitPolicy};

const KEYS: u32 = 1_000_000;

fn policy() -> RateLimitPolicy<DefaultClock> {
    RateLimitPolicy::new(
        "per-ip",
        KeySpec::ClientIp { ipv6_prefix: None },
        NonZeroU32::new(1_000_000).unwrap(),
        Duration::from_secs(1),
        NonZeroU32::new(1_000_000).unwrap(),
        NonZeroUsize::new(2 * KEYS as usize).unwrap(),
        DefaultClock::default(),
    )
    .unwrap()
}

fn key(i: u32) -> Key {
    Key::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_per_key() {
    let p = policy();
    let before = rss_bytes();
    for i in 0..KEYS {
        black_box(p.check_key(&key(i)));
    }
    let after = rss_bytes();
    assert_eq!(p.tracked_keys(), KEYS as usize);
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "memory: {KEYS} IPv4 keys tracked, resident set grew by {} bytes = {:.1} bytes per key",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / f64::from(KEYS)
        );
    }
}

fn keyed_check(c: &mut Criterion) {
    let p = policy();
    for i in 0..KEYS {
        p.check_key(&key(i));
    }
    let mut i = 0u32;
    c.bench_function("ratelimit/count_key_1m_keys_present", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(p.count_key(&key(i)))
        })
    });
    c.bench_function("ratelimit/check_key_1m_keys_present", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(p.check_key(&key(i)))
        })
    });
}

/// The same check with 1,000 keys (all in cache): the compute cost without memory latency.
fn keyed_check_small(c: &mut Criterion) {
    let p = policy();
    for i in 0..1_000 {
        p.check_key(&key(i));
    }
    let mut i = 0u32;
    c.bench_function("ratelimit/count_key_1k_keys_present", |b| {
        b.iter(|| {
            i = (i + 7919) % 1_000;
            black_box(p.count_key(&key(i)))
        })
    });
}

criterion_group!(benches, keyed_check, keyed_check_small);

/// Redis decisions per second from 64 concurrent callers on loopback (needs `redis-server`).
fn redis_throughput() {
    use portcullis_ratelimit::{FailureMode, RedisLimiter};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let Ok(mut child) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        println!("redis: skipped, redis-server not found");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let redis = RedisLimiter::new(
            &format!("redis://127.0.0.1:{port}/0"),
            "bench",
            Duration::from_millis(200),
            FailureMode::FailClosed,
        )
        .unwrap();
        let policy = Arc::new(policy().with_global(Arc::new(redis)));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let window = Duration::from_secs(3);
        let start = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..64u32 {
            let (policy, done, errors) =
                (Arc::clone(&policy), Arc::clone(&done), Arc::clone(&errors));
            tasks.spawn(async move {
                let mut i = caller;
                while start.elapsed() < window {
                    i = i.wrapping_add(64);
                    match policy.check_key_global(&key(i % 10_000)).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let secs = start.elapsed().as_secs_f64();
        println!(
            "redis: {:.0} decisions/s from 64 concurrent callers over {secs:.1} s ({} errors)",
            done.load(Ordering::Relaxed) as f64 / secs,
            errors.load(Ordering::Relaxed)
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    redis_throughput();
    memory_per_key();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
