//! [`ZeroTrustLayer`] and its service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{ConfigError, PeerCertificate, Problem};
use tower::{Layer, Service};

use crate::policy::{ZeroTrustPolicy, ZeroTrustPolicyConfig};

/// Enforces a [`ZeroTrustPolicy`] on every request, reading the connection's
/// [`PeerCertificate`] from the request extensions (put there by
/// [`WithConnectionInfo`](crate::WithConnectionInfo)). A request that fails gets `403`
/// problem+json (`ztls.certificate_required` or `ztls.certificate_denied`) and never reaches
/// the inner service.
#[derive(Debug, Clone)]
pub struct ZeroTrustLayer {
    policy: Arc<ZeroTrustPolicy>,
}

impl ZeroTrustLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: ZeroTrustPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl TryFrom<&ZeroTrustPolicyConfig> for ZeroTrustLayer {
    type Error = ConfigError;

    fn try_from(config: &ZeroTrustPolicyConfig) -> Result<Self, ConfigError> {
        ZeroTrustPolicy::try_from(config).map(Self::new)
    }
}

impl<S> Layer<S> for ZeroTrustLayer {
    type Service = ZeroTrust<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ZeroTrust {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service of [`ZeroTrustLayer`].
#[derive(Debug, Clone)]
pub struct ZeroTrust<S> {
    inner: S,
    policy: Arc<ZeroTrustPolicy>,
}

impl<S> ZeroTrust<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: ZeroTrustPolicy) -> Self {
        Self {
            inner,
            policy: Arc::new(policy),
        }
    }

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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ZeroTrust<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self
            .policy
            .check(request.extensions().get::<PeerCertificate>())
        {
            Ok(()) => ResponseFuture {
                state: State::Inner {
                    future: self.inner.call(request),
                },
            },
            Err(reason) => {
                tracing::debug!(%reason, "request refused by the zero-trust policy");
                ResponseFuture {
                    state: State::Rejected {
                        response: Some(Problem::new(reason).into_response()),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`ZeroTrust`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future.poll(cx),
            StateProj::Rejected { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
