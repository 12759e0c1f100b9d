//! The response future of [`WafService`](crate::WafService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, header, request, response};
use http_body::Body;
use pin_project_lite::pin_project;
use portcullis_core::{Reason, WafAction, WafVerdict};

use crate::bodies::{
    BoxError, RequestBody, ResponseBody, inspected_response, is_event_stream, reject,
};
use crate::config::{Mode, OverLimit};
use crate::waf::{PendingResponse, Waf, new_incident};

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
            pending: Option<Box<PendingResponse>>,
        },
        // Holding the response back while its body is read: for CRS's phase 4, or whole
        // for the leak guard.
        Holding {
            parts: Option<response::Parts>,
            body: Option<ResB>,
            buffered: BytesMut,
            trailers: Option<HeaderMap>,
            // How much is read before the response goes on.
            cap: usize,
            // How much of it phase 4 reads.
            inspect: usize,
            verdict: Option<WafVerdict>,
            pending: Option<Box<PendingResponse>>,
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
                    let Ok(ended) = ready!(fill(cx, body, buffered, trailers, limit + 1)) else {
                        return Poll::Ready(Ok(reject(Reason::UninspectableBody, None)));
                    };
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
                        pending: inspection.pending,
                    }
                }
                StateProj::Calling {
                    future,
                    verdict,
                    pending,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let verdict = verdict.take().unwrap_or_else(|| this.waf.verdict());
                    let (parts, body) = response.into_parts();
                    let pending = pending.take();
                    // CRS's phase 4 reads the bodies of its content types (up to its limit);
                    // the leak guard reads short bodies of a declared length whole.
                    let crs = match (&pending, this.waf.response_body_policy()) {
                        (Some(_), Some((types, limit))) if holds(&parts.headers, types) => {
                            Some(limit)
                        }
                        _ => None,
                    };
                    let whole = whole_length(this.waf, &parts.headers, &body);
                    if crs.is_none() && whole.is_none() {
                        let body = RequestBody::new(Bytes::new(), Some(body), None);
                        let response = match pending {
                            Some(pending) => respond(this.waf, verdict, *pending, parts, body, b""),
                            None => inspected_response(this.waf, verdict, parts, body),
                        };
                        State::Done {
                            response: Some(response),
                        }
                    } else {
                        // (One byte past the declared length, to see the body end.)
                        let cap = crs
                            .unwrap_or(0)
                            .max(whole.map_or(0, |len| len.saturating_add(1)));
                        State::Holding {
                            parts: Some(parts),
                            body: Some(body),
                            buffered: BytesMut::new(),
                            trailers: None,
                            cap,
                            inspect: crs.unwrap_or(0),
                            verdict: Some(verdict),
                            pending,
                        }
                    }
                }
                StateProj::Holding {
                    parts,
                    body,
                    buffered,
                    trailers,
                    cap,
                    inspect,
                    verdict,
                    pending,
                } => {
                    let Ok(ended) = ready!(fill(cx, body, buffered, trailers, *cap)) else {
                        // The upstream failed mid-body: nothing was sent yet, so say so.
                        let verdict = verdict.take();
                        return Poll::Ready(Ok(reject(Reason::UpstreamError, verdict)));
                    };
                    let (Some(parts), Some(verdict)) = (parts.take(), verdict.take()) else {
                        // Polled again after it finished.
                        return Poll::Pending;
                    };
                    let held = std::mem::take(buffered).freeze();
                    // Over the cap: the first bytes are inspected, the rest flows on.
                    let rest = if ended { None } else { body.take() };
                    let out = RequestBody::new(held.clone(), rest, trailers.take());
                    let response = match pending.take() {
                        Some(pending) => {
                            let inspected = held.slice(..held.len().min(*inspect));
                            respond(this.waf, verdict, *pending, parts, out, &inspected)
                        }
                        None => inspected_response(this.waf, verdict, parts, out),
                    };
                    State::Done {
                        response: Some(response),
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

/// Reads `body` into `buffered` until it holds `cap` bytes or the body ends (`Ok(true)`);
/// trailers go to `trailers`. `Err` when the body fails.
fn fill<B>(
    cx: &mut Context<'_>,
    body: &mut Option<B>,
    buffered: &mut BytesMut,
    trailers: &mut Option<HeaderMap>,
    cap: usize,
) -> Poll<Result<bool, ()>>
where
    B: Body<Data = Bytes> + Unpin,
{
    while buffered.len() < cap {
        let Some(b) = body.as_mut() else {
            return Poll::Ready(Ok(true));
        };
        match ready!(Pin::new(b).poll_frame(cx)) {
            None => return Poll::Ready(Ok(true)),
            Some(Err(_)) => return Poll::Ready(Err(())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buffered.extend_from_slice(&data),
                Err(frame) => *trailers = frame.into_trailers().ok(),
            },
        }
    }
    Poll::Ready(Ok(false))
}

/// Whether a response with these headers is held back for CRS to read its body: its content
/// type is one of `types`, and it is not an event stream.
fn holds(headers: &HeaderMap, types: &[String]) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    !essence.eq_ignore_ascii_case("text/event-stream")
        && types.iter().any(|t| t.eq_ignore_ascii_case(essence))
}

/// The declared length of a response body the leak guard reads whole before sending it: not
/// empty, not an event stream, and no longer than the guard's whole-body limit.
fn whole_length<B: Body>(waf: &Waf, headers: &HeaderMap, body: &B) -> Option<usize> {
    let guard = waf.leak_guard().filter(|_| waf.mode() != Mode::Off)?;
    let len = usize::try_from(body.size_hint().exact()?).ok()?;
    (len > 0 && len <= guard.whole_body_limit() && !is_event_stream(headers)).then_some(len)
}

/// Runs CRS's response phases, then withholds the response (blocking mode, a disruptive
/// rule) or passes it on behind the leak guard, with the matches in its verdict.
fn respond<B>(
    waf: &Waf,
    mut verdict: WafVerdict,
    pending: PendingResponse,
    parts: response::Parts,
    body: RequestBody<B>,
    inspected: &[u8],
) -> Response<ResponseBody<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let outcome = waf.inspect_response(pending, parts.status, &parts.headers, inspected);
    for id in &outcome.matched {
        verdict.record_match(*id);
    }
    if outcome.disrupted {
        match waf.mode() {
            Mode::Blocking => {
                verdict.escalate(WafAction::Block);
                verdict.set_incident(new_incident());
                return reject(Reason::ResponseBlocked, Some(verdict));
            }
            _ => verdict.escalate(WafAction::Detect),
        }
    } else if !outcome.matched.is_empty() {
        verdict.escalate(WafAction::Detect);
    }
    inspected_response(waf, verdict, parts, body)
}

impl<S, B, ResB> fmt::Debug for ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<RequestBody<B>>, Response = Response<ResB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
