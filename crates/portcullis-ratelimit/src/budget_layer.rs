//! [`TokenBudgetLayer`]: LLM token budgets for OpenAI- and Anthropic-compatible APIs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, Limited};
use portcullis_core::{
    Clock, ConfigError, Problem, Reason, RouteInfo, SystemClock, TokenUsage, UsageSource,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::{Layer, Service};

use crate::budget::{
    Api, BudgetStore, Reservation, Window, delta_text, estimate_tokens, request_estimate, usage_of,
};
use crate::config::{KeyConfig, RedisConfig};
use crate::global::{FailureMode, RedisLimiter};
use crate::key::{Key, KeySpec};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest SSE line buffered while looking for event boundaries.
const MAX_SSE_LINE: usize = 256 * 1024;

/// Token budget configuration.
///
/// ```yaml
/// key: tenant
/// budgets: [{ window: minute, tokens: 20000 }, { window: month, tokens: 5000000 }]
/// defaultMaxTokens: 1024
/// cutOffStreams: true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBudgetConfig {
    /// Whose budget (default: the principal's subject).
    #[serde(default = "default_key")]
    pub key: KeyConfig,
    /// Budgets per window; a request must fit all of them.
    pub budgets: Vec<BudgetConfig>,
    /// The completion allowance reserved when a request sets no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// End a stream (with a final SSE error event) once it exceeds the budget.
    #[serde(default)]
    pub cut_off_streams: bool,
    /// The largest request body read to estimate the prompt (default 1 MiB).
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// The largest JSON response read to find its `usage` (default 8 MiB).
    #[serde(default = "default_max_response")]
    pub max_response: usize,
    /// The most keys tracked.
    #[serde(default = "default_keys")]
    pub max_keys: usize,
    /// How long a rejected client is told to wait at most (default: until the window ends).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub max_retry_after: Option<Duration>,
    /// Share the budgets across replicas through this Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

/// Reserves `ARGV[1]` tokens in every window counter of KEYS (limits and TTLs in ms follow in
/// ARGV), all or nothing. Returns {1, least tokens left} or {0, index of the full window}.
const RESERVE: &str = r"
local tokens = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local spent = tonumber(redis.call('GET', k) or '0')
  if spent + tokens > limit then return {0, i} end
end
local least = -1
for i, k in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local spent = redis.call('INCRBY', k, tokens)
  redis.call('PEXPIRE', k, tonumber(ARGV[2 * i + 1]))
  if least < 0 or limit - spent < least then least = limit - spent end
end
return {1, least}
";

/// Adds `ARGV[1]` (possibly negative) to every window counter of KEYS that still exists.
const SETTLE: &str = r"
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, ARGV[1]) end
end
return {1}
";

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => portcullis_core::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "portcullis_core::duration")] Duration);
        Option::<W>::deserialize(d).map(|o| o.map(|w| w.0))
    }
}

/// One window's budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetConfig {
    /// The window.
    pub window: Window,
    /// Tokens per window.
    pub tokens: u64,
}

fn default_key() -> KeyConfig {
    KeyConfig::Named(crate::config::KeyName::Subject)
}
fn default_max_tokens() -> u64 {
    1024
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_response() -> usize {
    8 * 1024 * 1024
}
fn default_keys() -> usize {
    100_000
}

struct Global {
    redis: Arc<RedisLimiter>,
    limits: Vec<(Window, u64)>,
    reserve: redis::Script,
    settle: redis::Script,
}

struct Budgets {
    spec: KeySpec,
    store: BudgetStore,
    global: Option<Global>,
    default_max_tokens: u64,
    cut_off: bool,
    max_body: usize,
    max_response: usize,
    max_retry_after: Option<Duration>,
    clock: Arc<dyn Clock>,
}

/// Enforces LLM token budgets on `/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings` and `/v1/messages` (POST). Other requests pass through untouched.
///
/// Before forwarding, the request body is read (it has to be, to estimate the prompt) and the
/// prompt estimate plus the completion allowance (`max_tokens`, or the configured default) is
/// reserved in every window; a request the budget cannot cover gets `429
/// ratelimit.token_budget_exceeded` with `Retry-After`. After the response, the reservation is
/// replaced by the tokens really used: the `usage` of a JSON response, the usage of the final
/// SSE event, or, for a stream without usage, an estimate from the streamed text. Streams can be
/// cut off when they run past the budget. The request reaches the inner service with its body
/// buffered (`Either::Left`), or untouched (`Either::Right`) when it is not an accounted API.
///
/// The body's `model` is recorded in the request's [`RouteInfo`] when the route names none, so
/// inner layers, budgets keyed by `model` and (through the response's extensions) the audit
/// log see it. A route's own model is never replaced by the client's claim.
#[derive(Clone)]
pub struct TokenBudgetLayer {
    budgets: Arc<Budgets>,
}

impl fmt::Debug for SseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseState")
            .field("streamed", &self.streamed)
            .field("allowance", &self.allowance)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TokenBudgetLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBudgetLayer")
            .field("spec", &self.budgets.spec)
            .finish_non_exhaustive()
    }
}

impl TokenBudgetLayer {
    /// Builds the layer on `clock` (tests pass a fixed clock).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field at fault.
    pub fn from_config(
        config: &TokenBudgetConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        if config.budgets.is_empty() {
            return Err(ConfigError::new(
                "budgets",
                "no budget is configured",
                "add e.g. `{window: day, tokens: 1000000}`",
            ));
        }
        let mut limits = Vec::new();
        for (i, b) in config.budgets.iter().enumerate() {
            if b.tokens == 0 {
                return Err(ConfigError::new(
                    format!("budgets[{i}].tokens"),
                    "zero",
                    "allow at least one token",
                ));
            }
            if limits.iter().any(|(w, _)| *w == b.window) {
                return Err(ConfigError::new(
                    format!("budgets[{i}].window"),
                    "listed twice",
                    "give each window one budget",
                ));
            }
            limits.push((b.window, b.tokens));
        }
        if config.max_body == 0 || config.max_response == 0 || config.max_keys == 0 {
            return Err(ConfigError::new(
                "maxBody",
                "limits must be positive",
                "use the defaults",
            ));
        }
        let spec = crate::config::spec_for("key", &config.key)?;
        let global = match &config.redis {
            None => None,
            Some(r) => Some(Global {
                redis: Arc::new(
                    RedisLimiter::new(&r.url, &r.prefix, r.timeout, r.failure_mode)
                        .map_err(|e| {
                            ConfigError::new("redis.url", e, "write `redis://host:port/db`")
                        })?
                        .with_backoff(r.backoff),
                ),
                limits: limits.clone(),
                reserve: redis::Script::new(RESERVE),
                settle: redis::Script::new(SETTLE),
            }),
        };
        Ok(Self {
            budgets: Arc::new(Budgets {
                spec,
                store: BudgetStore::new(limits, config.max_keys),
                global,
                default_max_tokens: config.default_max_tokens,
                cut_off: config.cut_off_streams,
                max_body: config.max_body,
                max_response: config.max_response,
                max_retry_after: config.max_retry_after,
                clock,
            }),
        })
    }

    /// Tokens still available to the key of a request with these extensions and headers.
    pub fn available(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Option<u64> {
        let key = self.budgets.spec.key(headers, extensions)?;
        Some(
            self.budgets
                .store
                .available(&key, self.budgets.clock.now_unix())
                .0,
        )
    }
}

impl TryFrom<&TokenBudgetConfig> for TokenBudgetLayer {
    type Error = ConfigError;

    fn try_from(config: &TokenBudgetConfig) -> Result<Self, ConfigError> {
        Self::from_config(config, Arc::new(SystemClock))
    }
}

impl<S> Layer<S> for TokenBudgetLayer {
    type Service = TokenBudget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenBudget {
            inner,
            budgets: Arc::clone(&self.budgets),
        }
    }
}

/// The service of [`TokenBudgetLayer`].
#[derive(Clone)]
pub struct TokenBudget<S> {
    inner: S,
    budgets: Arc<Budgets>,
}

impl<S: fmt::Debug> fmt::Debug for TokenBudget<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBudget")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn problem<B>(reason: Reason, retry: Option<Duration>) -> Response<BudgetBody<B>> {
    let mut p = Problem::new(reason);
    if let Some(r) = retry {
        p = p.retry_after(r);
    }
    p.into_response::<Bytes>()
        .map(|b| BudgetBody::Full { body: Full::new(b) })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TokenBudget<S>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<BudgetBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let budgets = Arc::clone(&self.budgets);
        let api = (request.method() == Method::POST)
            .then(|| Api::from_path(request.uri().path()))
            .flatten();
        let head_key = budgets.spec.key(request.headers(), request.extensions());
        // A budget counted by model may only learn the model from the body.
        let key_in_body = head_key.is_none() && budgets.spec.uses_model();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(api) = api.filter(|_| head_key.is_some() || key_in_body) else {
            return Box::pin(async move {
                let response = inner.call(request.map(Either::Right)).await?;
                Ok(response.map(|body| BudgetBody::Pass { body }))
            });
        };
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let bytes = match Limited::new(body, budgets.max_body).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => return Ok(problem(Reason::BodyTooLarge, None)),
            };
            let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
                return Ok(problem(Reason::MalformedRequest, None));
            };
            let route = note_model(&mut parts.extensions, &json);
            let Some(key) =
                head_key.or_else(|| budgets.spec.key(&parts.headers, &parts.extensions))
            else {
                let request = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                let mut response = inner.call(request).await?;
                if let Some(route) = route {
                    response.extensions_mut().insert(route);
                }
                return Ok(response.map(|body| BudgetBody::Pass { body }));
            };
            let Some((prompt, completion)) =
                request_estimate(api, &json, budgets.default_max_tokens)
            else {
                return Ok(problem(Reason::MalformedRequest, None));
            };
            let now = budgets.clock.now_unix();
            let reserved = budgets
                .reserve(&key, prompt.saturating_add(completion), now)
                .await;
            let (made, available_after) = match reserved {
                Ok(held) => held,
                Err(Refused::Exceeded(wait)) => {
                    let wait = budgets.max_retry_after.map_or(wait, |m| wait.min(m));
                    return Ok(problem(Reason::TokenBudgetExceeded, Some(wait)));
                }
                Err(Refused::Unavailable) => {
                    return Ok(problem(Reason::RateLimitUnavailable, None));
                }
            };
            let mut reservation = Held {
                budgets: Arc::clone(&budgets),
                inner: Some(made),
            };
            let response = match inner
                .call(Request::from_parts(parts, Either::Left(Full::new(bytes))))
                .await
            {
                Ok(mut r) => {
                    if let Some(route) = route {
                        r.extensions_mut().insert(route);
                    }
                    r
                }
                Err(e) => {
                    reservation.settle(0);
                    return Err(e);
                }
            };
            if !response.status().is_success() {
                reservation.settle(0);
                return Ok(response.map(|body| BudgetBody::Pass { body }));
            }
            let streaming = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let (mut parts, body) = response.into_parts();
            if streaming {
                parts.extensions.insert(TokenUsage::new(
                    prompt,
                    completion,
                    UsageSource::Estimated,
                ));
                // What the stream may use before it is cut off: its own reservation plus
                // whatever else was left in the tightest window.
                let allowance = reservation.tokens().saturating_add(available_after);
                let sse = SseState {
                    budgets,
                    reservation,
                    prompt_estimate: prompt,
                    allowance,
                    streamed: 0,
                    reported: (None, None),
                    line: BytesMut::new(),
                    cut: false,
                    finished: false,
                };
                return Ok(Response::from_parts(
                    parts,
                    BudgetBody::Sse {
                        body,
                        state: Box::new(sse),
                    },
                ));
            }
            let bytes = match Limited::new(body, budgets.max_response).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    // Unreadable or oversized: charge the reservation, fail the exchange.
                    let tokens = reservation.tokens();
                    reservation.settle(tokens);
                    return Ok(problem(Reason::UpstreamError, None));
                }
            };
            let usage = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .map(|v| usage_of(&v))
                .unwrap_or((None, None));
            let recorded = match usage {
                (Some(p), c) => TokenUsage::new(p, c.unwrap_or(0), UsageSource::Reported),
                (None, Some(c)) => TokenUsage::new(prompt, c, UsageSource::Reported),
                (None, None) => TokenUsage::new(prompt, completion, UsageSource::Estimated),
            };
            reservation.settle(recorded.total());
            parts.extensions.insert(recorded);
            Ok(Response::from_parts(
                parts,
                BudgetBody::Full {
                    body: Full::new(bytes),
                },
            ))
        })
    }
}

/// Records the body's `model` in the request's [`RouteInfo`] when the route does not name one
/// itself (a route's own model is authoritative: a client cannot relabel it), and returns the
/// updated route for the response, where outer layers such as the audit log read it. A name
/// that is not valid route text (too long, control characters) is ignored.
fn note_model(extensions: &mut http::Extensions, json: &Value) -> Option<RouteInfo> {
    let model = json.get("model").and_then(Value::as_str)?;
    let route = extensions.get_mut::<RouteInfo>()?;
    if route.model().is_some() {
        return None;
    }
    *route = route.clone().with_model(model).ok()?;
    Some(route.clone())
}

/// Why a reservation was not made.
enum Refused {
    Exceeded(Duration),
    Unavailable,
}

/// Where a reservation was made.
enum Made {
    Local(Reservation),
    Global { keys: Vec<String>, tokens: u64 },
}

/// A reservation to settle once (settling again does nothing).
struct Held {
    budgets: Arc<Budgets>,
    inner: Option<Made>,
}

impl Held {
    fn tokens(&self) -> u64 {
        match &self.inner {
            Some(Made::Local(r)) => r.tokens(),
            Some(Made::Global { tokens, .. }) => *tokens,
            None => 0,
        }
    }

    fn settle(&mut self, used: u64) {
        match self.inner.take() {
            None => {}
            Some(Made::Local(r)) => self.budgets.store.settle(&r, used),
            Some(Made::Global { keys, tokens }) => {
                let Some(global) = &self.budgets.global else {
                    return;
                };
                let delta = i64::try_from(used).unwrap_or(i64::MAX)
                    - i64::try_from(tokens).unwrap_or(i64::MAX);
                if delta == 0 {
                    return;
                }
                let (redis, script) = (Arc::clone(&global.redis), global.settle.clone());
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Err(e) = redis.eval(&script, &keys, &[delta]).await {
                            tracing::warn!(error = %e, "token budget settlement not recorded in Redis");
                        }
                    });
                }
            }
        }
    }
}

impl Budgets {
    /// Reserves `tokens` for `key`, in Redis when configured (falling back or failing per the
    /// failure mode), returning the reservation and the least tokens left afterwards.
    async fn reserve(&self, key: &Key, tokens: u64, now: u64) -> Result<(Made, u64), Refused> {
        let local = || {
            self.store
                .reserve(key, tokens, now)
                .map(|r| (Made::Local(r), self.store.available(key, now).0))
                .map_err(Refused::Exceeded)
        };
        let Some(global) = &self.global else {
            return local();
        };
        let mut keys = Vec::with_capacity(global.limits.len());
        let mut args = vec![i64::try_from(tokens).unwrap_or(i64::MAX)];
        let mut ends = Vec::with_capacity(global.limits.len());
        for (window, limit) in &global.limits {
            let (start, end) = window.bounds(now);
            keys.push(
                global
                    .redis
                    .key_name(&format!("budget:{window:?}:{start}"), key),
            );
            args.push(i64::try_from(*limit).unwrap_or(i64::MAX));
            // Keep the counter a little past its window so late settlements still land.
            args.push(i64::try_from((end.saturating_sub(now) + 60) * 1000).unwrap_or(i64::MAX));
            ends.push(end);
        }
        match global.redis.eval(&global.reserve, &keys, &args).await {
            Ok(reply) => match reply.as_slice() {
                [1, left] => Ok((
                    Made::Global { keys, tokens },
                    u64::try_from(*left).unwrap_or(0),
                )),
                [0, index] => {
                    let end = usize::try_from(*index)
                        .ok()
                        .and_then(|i| ends.get(i.saturating_sub(1)))
                        .copied()
                        .unwrap_or(now + 1);
                    Err(Refused::Exceeded(Duration::from_secs(
                        end.saturating_sub(now).max(1),
                    )))
                }
                _ => Err(Refused::Unavailable),
            },
            Err(e) => {
                tracing::warn!(error = %e, "global token budget unavailable");
                match global.redis.failure_mode() {
                    FailureMode::FailClosed => Err(Refused::Unavailable),
                    _ => local(),
                }
            }
        }
    }
}

/// Accounting state of a streamed response (opaque).
pub struct SseState {
    budgets: Arc<Budgets>,
    reservation: Held,
    prompt_estimate: u64,
    allowance: u64,
    streamed: u64,
    reported: (Option<u64>, Option<u64>),
    line: BytesMut,
    cut: bool,
    finished: bool,
}

impl SseState {
    /// Reads complete events out of `data`; returns whether the budget is now exceeded.
    fn observe(&mut self, data: &[u8]) -> bool {
        self.line.extend_from_slice(data);
        while let Some(end) = find_event_end(&self.line) {
            let event = self.line.split_to(end);
            for line in event[..].split(|b: &u8| *b == b'\n') {
                let Some(payload) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let Ok(value) = serde_json::from_slice::<Value>(payload.trim_ascii()) else {
                    continue;
                };
                if let Some(text) = delta_text(&value) {
                    self.streamed = self.streamed.saturating_add(estimate_tokens(text));
                }
                let (p, c) = usage_of(&value);
                if p.is_some() {
                    self.reported.0 = p;
                }
                if c.is_some() {
                    self.reported.1 = c;
                }
            }
        }
        if self.line.len() > MAX_SSE_LINE {
            self.line.clear();
        }
        let used = self.reported.0.unwrap_or(self.prompt_estimate)
            + self.reported.1.unwrap_or(0).max(self.streamed);
        self.budgets.cut_off && used > self.allowance
    }

    fn settle(&mut self) {
        let prompt = self.reported.0.unwrap_or(self.prompt_estimate);
        let completion = self.reported.1.unwrap_or(self.streamed);
        self.reservation.settle(prompt.saturating_add(completion));
    }
}

impl Drop for SseState {
    fn drop(&mut self) {
        // A client that went away still pays for what was generated.
        self.settle();
    }
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The final event of a stream cut off by its budget.
pub const CUT_OFF_EVENT: &[u8] = b"event: error\ndata: {\"error\":{\"type\":\"token_budget_exceeded\",\"code\":\"ratelimit.token_budget_exceeded\",\"message\":\"The token budget is exhausted; the response was cut off.\"}}\n\n";

/// The response body of [`TokenBudget`].
pub enum BudgetBody<B> {
    /// Untouched.
    Pass {
        /// The inner body.
        body: B,
    },
    /// Read in full (JSON responses, rejections).
    Full {
        /// The buffered body.
        body: Full<Bytes>,
    },
    /// A stream being accounted.
    Sse {
        /// The inner body.
        body: B,
        /// The accounting.
        state: Box<SseState>,
    },
}

impl<B> fmt::Debug for BudgetBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BudgetBody")
    }
}

impl<B> Body for BudgetBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Pass { body } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Full { body } => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Self::Sse { body, state } => {
                if state.finished {
                    return Poll::Ready(None);
                }
                if state.cut {
                    state.finished = true;
                    state.settle();
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(CUT_OFF_EVENT)))));
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        state.finished = true;
                        state.settle();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        state.finished = true;
                        state.settle();
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            state.cut = state.observe(data);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pass { body } => body.is_end_stream(),
            Self::Full { body } => body.is_end_stream(),
            Self::Sse { state, .. } => state.finished,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Pass { body } => body.size_hint(),
            Self::Full { body } => body.size_hint(),
            Self::Sse { .. } => SizeHint::default(),
        }
    }
}
