//! The response future of [`WafService`](crate::WafService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, request};
use http_body::Body;
use pin_project_lite::pin_project;
use portcullis_core::{Reason, WafVerdict};

use crate::bodies::{BoxError, RequestBody, ResponseBody, inspected_response, reject};
use crate::config::OverLimit;
use crate::waf::Waf;

pin_project! {
    /// Response future of [`WafService`](crate::WafService): it reads the request body up to
    /// the inspection limit, inspects the request, then calls the inner service and wraps its
    /// response body for the leak guard.
    pub struct ResponseFuture<S, B, ResB>
    where
        S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    {
        #[pin]
        state: State<S, B, S::Future, ResB>,
        waf: Waf,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, ResB> {
        Reading {
            inner: Option<S>,
            parts: Option<request::Parts>,
            body: Option<B>,
            buffered: BytesMut,
            trailers: Option<HeaderMap>,
        },
        Calling {
            #[pin]
            future: F,
            verdict: Option<WafVerdict>,
        },
        Done { response: Option<Response<ResponseBody<ResB>>> },
    }
}

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>>,
{
    pub(crate) fn new(waf: Waf, inner: S, request: Request<B>) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            state: State::Reading {
                inner: Some(inner),
                parts: Some(parts),
                body: Some(body),
                buffered: BytesMut::new(),
                trailers: None,
            },
            waf,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Reading {
                    inner,
                    parts,
                    body,
                    buffered,
                    trailers,
                } => {
                    let limit = this.waf.body_config().limit;
                    // Buffer up to the limit (plus one byte, to know it was exceeded).
                    let mut ended = false;
                    while buffered.len() <= limit {
                        let Some(b) = body.as_mut() else {
                            ended = true;
                            break;
                        };
                        match ready!(Pin::new(b).poll_frame(cx)) {
                            None => {
                                ended = true;
                                break;
                            }
                            Some(Err(_)) => {
                                return Poll::Ready(Ok(reject(Reason::UninspectableBody, None)));
                            }
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => buffered.extend_from_slice(&data),
                                Err(frame) => *trailers = frame.into_trailers().ok(),
                            },
                        }
                    }
                    let over = !ended;
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        // Polled again after it finished.
                        return Poll::Pending;
                    };
                    if over && this.waf.body_config().over_limit == OverLimit::Reject {
                        return Poll::Ready(Ok(reject(Reason::InspectionLimit, None)));
                    }
                    let buffered = std::mem::take(buffered).freeze();
                    let inspected = buffered.slice(..buffered.len().min(limit));
                    let inspection = if over {
                        this.waf.inspect_request_prefix(&parts, &inspected)
                    } else {
                        this.waf.inspect_request(&parts, &inspected)
                    };
                    if let Some(reason) = inspection.reject {
                        return Poll::Ready(Ok(reject(reason, Some(inspection.verdict))));
                    }
                    parts.extensions.insert(inspection.verdict.clone());
                    let rest = if over { body.take() } else { None };
                    let body = RequestBody::new(buffered, rest, trailers.take());
                    State::Calling {
                        future: inner.call(Request::from_parts(parts, body)),
                        verdict: Some(inspection.verdict),
                    }
                }
                StateProj::Calling { future, verdict } => {
                    let response = ready!(future.poll(cx))?;
                    let verdict = verdict.take().unwrap_or_else(|| this.waf.verdict());
                    State::Done {
                        response: Some(inspected_response(this.waf, verdict, response)),
                    }
                }
                StateProj::Done { response } => {
                    return response
                        .take()
                        .map_or(Poll::Pending, |r| Poll::Ready(Ok(r)));
                }
            };
            this.state.set(next);
        }
    }
}

impl<S, B, ResB> fmt::Debug for ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
