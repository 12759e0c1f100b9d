//! [`Authn`], the service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use crate::authenticator::{Authenticator, Check};
use crate::error::AuthnError;
use crate::future::ResponseFuture;

/// Authenticates requests before they reach `S`; see [`AuthnLayer`](crate::AuthnLayer).
///
/// A rejection is an ordinary response (`401`, `403`, `400` or `503`, problem+json, with
/// RFC 6750 challenges); the inner service is not called. Errors of the inner service pass
/// through unchanged.
#[derive(Debug, Clone)]
pub struct Authn<S> {
    inner: S,
    auth: Authenticator,
}

impl<S> Authn<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self { inner, auth }
    }

    /// A layer for this service.
    pub fn layer(auth: Authenticator) -> crate::AuthnLayer {
        crate::AuthnLayer::new(auth)
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

fn reject<B: From<Bytes>>(auth: &Authenticator, err: &AuthnError) -> Response<B> {
    tracing::debug!(reason = %err.reason(), detail = %err, "request not authenticated");
    auth.problem(err).into_response()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authn<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.auth.check(request.headers(), request.extensions()) {
            Check::Done(Ok(authenticated)) => {
                // The principal also goes out on the response, for the audit layer outside.
                let principal = authenticated.principal().clone();
                authenticated.apply(&mut request);
                ResponseFuture::inner(self.inner.call(request), principal)
            }
            Check::Done(Err(err)) => ResponseFuture::rejected(reject(&self.auth, &err)),
            Check::Pending(pending) => {
                // The service that was made ready goes with the request; a fresh clone stays.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let auth = self.auth.clone();
                ResponseFuture::waiting(Box::pin(async move {
                    match pending.resolve(&auth).await {
                        Ok(authenticated) => {
                            let principal = authenticated.principal().clone();
                            authenticated.apply(&mut request);
                            inner.call(request).await.map(|mut response| {
                                response.extensions_mut().insert(principal);
                                response
                            })
                        }
                        Err(err) => Ok(reject(&auth, &err)),
                    }
                }))
            }
        }
    }
}
