//! [`WafService`]: inspects the request, then calls the inner service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use crate::bodies::{BoxError, RequestBody, ResponseBody};
use crate::future::ResponseFuture;
use crate::waf::Waf;

/// The service made by [`WafLayer`](crate::WafLayer).
#[derive(Debug, Clone)]
pub struct WafService<S> {
    inner: S,
    waf: Waf,
}

impl<S> WafService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, waf: Waf) -> Self {
        Self { inner, waf }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> tower::Service<Request<B>> for WafService<S>
where
    S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes into the future, which calls it once the body is inspected.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(self.waf.clone(), inner, request)
    }
}
