//! Global limits shared by ingress replicas, decided in Redis.
//!
//! Each decision is one round trip: a Lua script runs GCRA atomically on the server, on the
//! server's clock (`TIME`), so replicas with skewed clocks still agree and concurrent decisions
//! never let more through than the quota. Keys expire when their bucket has refilled.
//!
//! Calls have a short timeout (default 20 ms). When Redis cannot answer, the configured
//! [`FailureMode`] decides: fall back to the replica's local limiter (fail open) or answer
//! `503` (fail closed). After a failure, Redis is left alone for a back-off period (default
//! 1 s) so a dead server does not add its timeout to every request; the connection manager
//! reconnects by itself.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::key::Key;

/// GCRA in Lua. KEYS[1]: the bucket. ARGV: emission interval (µs), burst, cost.
/// Returns {allowed (0/1), wait µs (when refused), remaining}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now + interval * burst - new_tat) / interval)}
";

/// What happens when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum FailureMode {
    /// Decide with this replica's local limiter (the default: availability first; each
    /// replica then enforces the quota on its own).
    #[default]
    FailOpen,
    /// Answer `503 ratelimit.unavailable`.
    FailClosed,
}

/// A Redis decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed { remaining: u64 },
    Limited { wait: Duration },
}

/// A shared Redis connection and the GCRA script.
pub struct RedisLimiter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    backoff: Duration,
    failure: FailureMode,
    down_until: Mutex<Option<Instant>>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// Why Redis gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisUnavailable {
    /// The call did not finish within the timeout.
    #[error("timed out")]
    Timeout,
    /// Redis answered with an error or the connection failed.
    #[error("{0}")]
    Failed(String),
    /// Recently failed; Redis is being left alone for the back-off period.
    #[error("backing off after a failure")]
    BackingOff,
}

fn encode(key: &Key, out: &mut String) {
    match key {
        Key::Ip(ip) => {
            out.push_str("ip:");
            out.push_str(&ip.to_string());
        }
        Key::Text(t) => {
            out.push_str("t:");
            // Keep composite separators unambiguous.
            out.push_str(&t.replace('\\', "\\\\").replace('|', "\\|"));
        }
        Key::Global => out.push('g'),
        Key::Composite(parts) => {
            out.push('[');
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                encode(p, out);
            }
            out.push(']');
        }
    }
}

impl RedisLimiter {
    /// A limiter using the Redis at `url` (`redis://127.0.0.1:6379/0`), naming its keys
    /// `{prefix}:{policy}:{key}`. The connection is made on first use.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        failure: FailureMode,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            timeout,
            backoff: Duration::from_secs(1),
            failure,
            down_until: Mutex::new(None),
        })
    }

    /// Sets how long Redis is left alone after a failure (default 1 s).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure
    }

    fn mark_down(&self) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + self.backoff);
        }
    }

    fn backing_off(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Runs `script` with `keys` and integer `args` under the timeout and back-off rules,
    /// returning its integer array reply.
    pub(crate) async fn eval(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[i64],
    ) -> Result<Vec<i64>, RedisUnavailable> {
        if self.backing_off() {
            return Err(RedisUnavailable::BackingOff);
        }
        let call = async {
            let conn = self
                .conn
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(self.client.clone(), config).await
                })
                .await?;
            let mut conn = conn.clone();
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            for a in args {
                invocation.arg(*a);
            }
            invocation.invoke_async::<Vec<i64>>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                self.mark_down();
                Err(RedisUnavailable::Timeout)
            }
            Ok(Err(e)) => {
                self.mark_down();
                Err(RedisUnavailable::Failed(e.to_string()))
            }
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// The Redis key for `key` under `scope` (a policy name, or `budget:WINDOW:START`).
    pub(crate) fn key_name(&self, scope: &str, key: &Key) -> String {
        let mut name = format!("{}:{scope}:", self.prefix);
        encode(key, &mut name);
        name
    }

    /// Decides one request of `cost` units for `key` under `policy` (one unit per `interval`,
    /// bursts of `burst`).
    pub(crate) async fn check(
        &self,
        policy: &str,
        key: &Key,
        interval: Duration,
        burst: u32,
        cost: u32,
    ) -> Result<Verdict, RedisUnavailable> {
        let name = self.key_name(policy, key);
        let interval_us = i64::try_from(interval.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let reply = self
            .eval(
                &self.script,
                &[name],
                &[interval_us, i64::from(burst), i64::from(cost)],
            )
            .await?;
        match reply.as_slice() {
            [1, _, remaining] => Ok(Verdict::Allowed {
                remaining: u64::try_from(*remaining).unwrap_or(0),
            }),
            [0, wait_us, _] => Ok(Verdict::Limited {
                wait: Duration::from_micros(u64::try_from(*wait_us).unwrap_or(0)),
            }),
            _ => Err(RedisUnavailable::Failed("unexpected script reply".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_unambiguously() {
        let mut a = String::new();
        encode(
            &Key::Composite(vec![Key::Text("a|b".into()), Key::Text("c".into())].into()),
            &mut a,
        );
        let mut b = String::new();
        encode(
            &Key::Composite(vec![Key::Text("a".into()), Key::Text("b|c".into())].into()),
            &mut b,
        );
        assert_ne!(a, b);
        let mut ip = String::new();
        encode(&Key::Ip("192.0.2.1".parse().unwrap()), &mut ip);
        assert_eq!(ip, "ip:192.0.2.1");
        assert!(
            RedisLimiter::new(
                "not a url",
                "p",
                Duration::from_millis(20),
                FailureMode::FailOpen
            )
            .is_err()
        );
    }
}
