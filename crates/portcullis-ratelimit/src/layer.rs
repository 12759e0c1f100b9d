//! [`RateLimitLayer`], its service and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{Problem, RateLimitDecision, Reason};
use tower::{Layer, Service};

use crate::key::Key;
use crate::policy::{BruteForcePolicy, Count, RateLimitPolicy};

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers
/// (draft-ietf-httpapi-ratelimit-headers) for a decision of a policy refilling one unit per
/// `interval`.
pub fn ratelimit_headers(
    decision: &RateLimitDecision,
    interval: Duration,
) -> [(HeaderName, HeaderValue); 2] {
    let reset = match decision.retry_after() {
        Some(wait) => ceil_secs(wait),
        None => ceil_secs(
            interval.saturating_mul(
                u32::try_from(decision.limit().saturating_sub(decision.remaining()))
                    .unwrap_or(u32::MAX),
            ),
        ),
    };
    let name = decision.policy();
    // Policy names are validated to `[A-Za-z0-9._-]`, so these values are always valid.
    let policy = format!(
        "\"{name}\";q={};w={}",
        decision.limit(),
        ceil_secs(decision.window())
    );
    let state = format!("\"{name}\";r={};t={reset}", decision.remaining());
    [
        (
            RATELIMIT_POLICY.clone(),
            HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("\"invalid\"")),
        ),
        (
            RATELIMIT.clone(),
            HeaderValue::from_str(&state).unwrap_or(HeaderValue::from_static("\"invalid\"")),
        ),
    ]
}

struct Limits<C: Clock> {
    policies: Vec<RateLimitPolicy<C>>,
    brute_force: Option<BruteForcePolicy<C>>,
    headers_on_success: bool,
    /// Whether any policy is decided in Redis (and requests may have to wait for it).
    any_global: bool,
}

/// Applies rate-limit policies and brute-force throttling to a service.
///
/// Every policy whose key the request has is counted; if any is exceeded the request gets
/// `429` problem+json with `Retry-After` and the `RateLimit-Policy`/`RateLimit` headers of the
/// deciding (most restrictive) policy, and the inner service is not called. Otherwise the
/// response carries the same headers (unless disabled). Either way the deciding
/// [`RateLimitDecision`] is put into the response extensions for the audit layer.
pub struct RateLimitLayer<C: Clock = DefaultClock> {
    limits: Arc<Limits<C>>,
}

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            limits: Arc::clone(&self.limits),
        }
    }
}

impl<C: Clock> fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.limits.policies)
            .field("brute_force", &self.limits.brute_force)
            .finish_non_exhaustive()
    }
}

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// A layer applying `policies` and, optionally, `brute_force`.
    pub fn new(
        policies: Vec<RateLimitPolicy<C>>,
        brute_force: Option<BruteForcePolicy<C>>,
        headers_on_success: bool,
    ) -> Self {
        Self {
            limits: Arc::new(Limits {
                any_global: policies.iter().any(RateLimitPolicy::is_global),
                policies,
                brute_force,
                headers_on_success,
            }),
        }
    }

    /// The policies.
    pub fn policies(&self) -> &[RateLimitPolicy<C>] {
        &self.limits.policies
    }
}

impl<S, C: Clock> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    limits: Arc<Limits<C>>,
}

impl<S: Clone, C: Clock> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limits: Arc::clone(&self.limits),
        }
    }
}

impl<S: fmt::Debug, C: Clock> fmt::Debug for RateLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clock> RateLimit<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, C, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let limits = &self.limits;
        let bf_key = limits
            .brute_force
            .as_ref()
            .and_then(|bf| bf.key(request.headers(), request.extensions()));
        if let (Some(bf), Some(key)) = (&limits.brute_force, &bf_key)
            && let Some(wait) = bf.locked_for(key)
        {
            let response = Problem::new(Reason::BruteForceLockout)
                .retry_after(wait)
                .into_response();
            return ResponseFuture::rejected(response);
        }
        let bf = bf_key.map(|k| (Arc::clone(&self.limits), k));
        if !limits.any_global {
            // Every policy is local: count in one pass, no waiting.
            let counts = limits
                .policies
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.key(request.headers(), request.extensions())
                        .map(|k| (i, p.count_key(&k)))
                })
                .collect();
            return match decide(limits, counts, bf) {
                Err(response) => ResponseFuture::rejected(response),
                Ok(after) => ResponseFuture {
                    state: State::Inner {
                        future: self.inner.call(request),
                        after: Some(after),
                    },
                },
            };
        }
        let keyed: Vec<(usize, Key)> = limits
            .policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.key(request.headers(), request.extensions())
                    .map(|k| (i, k))
            })
            .collect();
        // A global policy needs Redis: the service made ready goes with the request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = Arc::clone(&self.limits);
        ResponseFuture {
            state: State::Waiting {
                future: Box::pin(async move {
                    let mut counts = Vec::with_capacity(keyed.len());
                    for (i, key) in &keyed {
                        let Some(policy) = limits.policies.get(*i) else {
                            continue;
                        };
                        match policy.count_key_global(key).await {
                            Ok(c) => counts.push((*i, c)),
                            Err(_) => {
                                return Ok(
                                    Problem::new(Reason::RateLimitUnavailable).into_response()
                                );
                            }
                        }
                    }
                    match decide(&limits, counts, bf) {
                        Err(response) => Ok(response),
                        Ok(after) => {
                            let mut response = inner.call(request).await?;
                            after.apply(&mut response);
                            Ok(response)
                        }
                    }
                }),
            },
        }
    }
}

/// The deciding policy's verdict: a `429` response, or what to add to the inner response.
fn decide<B: From<Bytes>, C: Clock + Clone>(
    limits: &Limits<C>,
    counts: Vec<(usize, Count)>,
    brute_force: Option<(Arc<Limits<C>>, Key)>,
) -> Result<After<C>, Response<B>> {
    // Only the deciding policy's count becomes a decision record.
    let deciding = counts
        .iter()
        .filter_map(|(i, c)| limits.policies.get(*i).map(|p| (p, *c)))
        .max_by_key(|(p, c)| p.severity(*c));
    let interval = deciding.map(|(p, _)| p.interval()).unwrap_or_default();
    let deciding = deciding.map(|(p, c)| p.decision(c));
    if let Some(d) = deciding.as_ref().filter(|d| d.is_limited()) {
        let mut problem =
            Problem::new(Reason::RateLimited).retry_after(d.retry_after().unwrap_or_default());
        for (name, value) in ratelimit_headers(d, interval) {
            problem = problem.header(name, value);
        }
        let mut response: Response<B> = problem.into_response();
        response.extensions_mut().insert(d.clone());
        return Err(response);
    }
    let mut headers = HeaderMap::new();
    if let Some(d) = &deciding
        && limits.headers_on_success
    {
        headers.extend(ratelimit_headers(d, interval));
    }
    Ok(After {
        decision: deciding,
        headers,
        brute_force,
    })
}

struct After<C: Clock> {
    decision: Option<RateLimitDecision>,
    headers: HeaderMap,
    brute_force: Option<(Arc<Limits<C>>, Key)>,
}

impl<C: Clock + Clone> After<C> {
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some((limits, key)) = &self.brute_force
            && let Some(bf) = &limits.brute_force
        {
            bf.record(key, response.status());
        }
        response.headers_mut().extend(self.headers);
        if let Some(d) = self.decision {
            response.extensions_mut().insert(d);
        }
    }
}

type Waiting<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<F, B, C: Clock, E> {
        #[pin]
        state: State<F, B, C, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, C: Clock, E> {
        Inner { #[pin] future: F, after: Option<After<C>> },
        Rejected { response: Option<Response<B>> },
        Waiting { future: Waiting<B, E> },
    }
}

impl<F, B, C: Clock, E> ResponseFuture<F, B, C, E> {
    fn rejected(response: Response<B>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E, C> Future for ResponseFuture<F, B, C, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Clock + Clone,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            StateProj::Waiting { future } => future.as_mut().poll(cx),
            StateProj::Inner { future, after } => {
                let mut response = match future.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(r)) => r,
                };
                if let Some(after) = after.take() {
                    after.apply(&mut response);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<F, B, C: Clock, E> fmt::Debug for ResponseFuture<F, B, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
