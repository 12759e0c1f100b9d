//! Prometheus metrics of the ingress, served on the admin port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upstream latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The responses of one route, by status: counted without a lock.
#[derive(Debug)]
pub struct RouteCounters {
    /// Index: status − 100 (100..=599).
    by_status: Box<[AtomicU64]>,
}

impl RouteCounters {
    fn new() -> Self {
        Self {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts a response.
    pub fn count(&self, status: u16) {
        if let Some(c) = self.by_status.get(usize::from(status.saturating_sub(100))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per route (empty: no route), kept across rebuilds.
    requests: Mutex<BTreeMap<String, Arc<RouteCounters>>>,
    rejections: Mutex<BTreeMap<(String, String), u64>>,
    waf_rules: Mutex<BTreeMap<u32, u64>>,
    tokens: Mutex<BTreeMap<String, u64>>,
    upstream: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    /// Route-table rebuilds, and objects reported invalid at the last one.
    pub(crate) reloads: AtomicU64,
    pub(crate) invalid_objects: AtomicU64,
    /// TLS handshakes that failed or timed out (including refused client certificates).
    pub(crate) tls_handshake_failures: AtomicU64,
    /// Connections closed for being idle.
    pub(crate) idle_closed: AtomicU64,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, by: u64) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += by;
    }
}

impl Metrics {
    /// The counters of `route` (empty: no route), made on first use.
    pub fn route(&self, route: &str) -> Arc<RouteCounters> {
        match self.requests.lock() {
            Ok(mut m) => m
                .entry(route.to_owned())
                .or_insert_with(|| Arc::new(RouteCounters::new()))
                .clone(),
            Err(_) => Arc::new(RouteCounters::new()),
        }
    }

    /// Counts a response of `route` (empty: no route).
    pub fn request(&self, route: &str, status: u16) {
        self.route(route).count(status);
    }

    /// Counts a rejection by layer and reason code.
    pub fn rejection(&self, layer: &str, reason: &str) {
        bump(&self.rejections, (layer.to_owned(), reason.to_owned()), 1);
    }

    /// Counts the WAF rules that matched.
    pub fn waf_rules(&self, rules: &[u32]) {
        for r in rules {
            bump(&self.waf_rules, *r, 1);
        }
    }

    /// Counts LLM tokens of `route`.
    pub fn tokens(&self, route: &str, tokens: u64) {
        bump(&self.tokens, route.to_owned(), tokens);
    }

    /// Observes an upstream's latency.
    pub fn upstream(&self, latency: Duration) {
        if let Ok(mut h) = self.upstream.lock() {
            let secs = latency.as_secs_f64();
            for (bucket, le) in h.0.iter_mut().zip(BUCKETS) {
                if secs <= le {
                    *bucket += 1;
                }
            }
            h.1 += 1;
            h.2 += secs;
        }
    }

    /// The Prometheus text exposition, with the audit queue depth when there is a log.
    pub fn render(&self, audit: Option<portcullis_audit::AuditStats>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP portcullis_requests_total Responses by route and status.\n# TYPE portcullis_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (route, counters) in m.iter() {
                for (status, n) in (100u16..).zip(counters.by_status.iter()) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "portcullis_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                            escape(route)
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_rejections_total Requests refused, by layer and reason.\n# TYPE portcullis_rejections_total counter"
        );
        if let Ok(m) = self.rejections.lock() {
            for ((layer, reason), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "portcullis_rejections_total{{layer=\"{}\",reason=\"{}\"}} {n}",
                    escape(layer),
                    escape(reason)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_waf_rule_hits_total WAF rule matches.\n# TYPE portcullis_waf_rule_hits_total counter"
        );
        if let Ok(m) = self.waf_rules.lock() {
            for (rule, n) in m.iter() {
                let _ = writeln!(out, "portcullis_waf_rule_hits_total{{rule=\"{rule}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_llm_tokens_total LLM tokens by route.\n# TYPE portcullis_llm_tokens_total counter"
        );
        if let Ok(m) = self.tokens.lock() {
            for (route, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "portcullis_llm_tokens_total{{route=\"{}\"}} {n}",
                    escape(route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_upstream_latency_seconds Time to the upstream's response head.\n# TYPE portcullis_upstream_latency_seconds histogram"
        );
        if let Ok(h) = self.upstream.lock() {
            for (le, n) in BUCKETS.iter().zip(h.0) {
                let _ = writeln!(
                    out,
                    "portcullis_upstream_latency_seconds_bucket{{le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "portcullis_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {}\nportcullis_upstream_latency_seconds_count {}\nportcullis_upstream_latency_seconds_sum {}",
                h.1, h.1, h.2
            );
        }
        let _ = writeln!(
            out,
            "# TYPE portcullis_route_table_reloads_total counter\nportcullis_route_table_reloads_total {}\n# TYPE portcullis_invalid_objects gauge\nportcullis_invalid_objects {}",
            self.reloads.load(Ordering::Relaxed),
            self.invalid_objects.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE portcullis_tls_handshake_failures_total counter\nportcullis_tls_handshake_failures_total {}\n# TYPE portcullis_idle_connections_closed_total counter\nportcullis_idle_connections_closed_total {}",
            self.tls_handshake_failures.load(Ordering::Relaxed),
            self.idle_closed.load(Ordering::Relaxed)
        );
        if let Some(a) = audit {
            let _ = writeln!(
                out,
                "# TYPE portcullis_audit_queue_depth gauge\nportcullis_audit_queue_depth {}\n# TYPE portcullis_audit_records_written_total counter\nportcullis_audit_records_written_total {}\n# TYPE portcullis_audit_events_dropped_total counter\nportcullis_audit_events_dropped_total {}\n# TYPE portcullis_audit_write_errors_total counter\nportcullis_audit_write_errors_total {}",
                a.queued, a.written, a.dropped, a.write_errors
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
