//! The request and response bodies of [`WafService`](crate::WafService).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::{Body, Frame, SizeHint};
use portcullis_core::{Problem, Reason, SharedVerdict, WafAction, WafVerdict};

use crate::config::Mode;
use crate::leak::{LeakAction, LeakGuard, LeakStream};
use crate::waf::{Waf, new_incident};

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A problem response for a request the WAF stopped, with the verdict (and its incident id)
/// when the rules decided.
pub(crate) fn reject<B>(reason: Reason, verdict: Option<WafVerdict>) -> Response<ResponseBody<B>> {
    let mut problem = Problem::new(reason);
    if let Some(incident) = verdict.as_ref().and_then(WafVerdict::incident) {
        problem = problem.incident(incident);
    }
    let mut response: Response<ResponseBody<B>> = problem.into_response();
    if let Some(verdict) = verdict {
        response.extensions_mut().insert(verdict);
    }
    response
}

/// Wraps the inner service's response: the verdict (and a [`SharedVerdict`] the body keeps
/// growing) in its extensions, and the body behind the leak guard when one is on. A body
/// already read whole (no rest to come, no trailers) is scanned here, before any of it is
/// sent: it keeps an exact `Content-Length`, and a block becomes a 502 problem.
pub(crate) fn inspected_response<B>(
    waf: &Waf,
    verdict: WafVerdict,
    mut parts: http::response::Parts,
    mut body: RequestBody<B>,
) -> Response<ResponseBody<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // (An empty body, such as a HEAD response's or a 204's, has nothing to scan and keeps
    // its headers.)
    let leak = waf
        .leak_guard()
        .filter(|_| waf.mode() != Mode::Off && body.size_hint().exact() != Some(0));
    let report = SharedVerdict::new(verdict.clone());
    let mut stream = leak.map(|guard| LeakState {
        stream: guard.stream(),
        guard: guard.clone(),
        report: report.clone(),
        out: VecDeque::new(),
        sse: is_event_stream(&parts.headers),
        detect_only: waf.mode() == Mode::DetectionOnly,
        trailers: None,
    });
    if let Some(state) = stream.as_mut() {
        if !state.sse && body.rest.is_none() && body.trailers.is_none() {
            let data = body.prefix.take().unwrap_or_default();
            match state.whole(data) {
                Ok(out) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                    body = RequestBody::new(out, None, None);
                    stream = None;
                }
                Err(_) => {
                    let mut verdict = report.snapshot();
                    verdict.set_incident(new_incident());
                    return reject(Reason::ResponseBlocked, Some(verdict));
                }
            }
        } else {
            // Redaction changes the length.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
    }
    parts.extensions.insert(verdict);
    parts.extensions.insert(report);
    Response::from_parts(
        parts,
        ResponseBody {
            kind: Kind::Inner {
                body,
                leak: stream.map(Box::new),
                done: false,
            },
        },
    )
}

/// Whether a response with these headers is an event stream (SSE), which is never held back.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The request body handed to the inner service: the buffered bytes, then whatever was not
/// buffered (when the body was over the inspection limit), unchanged. (A response body held
/// back for inspection goes on the same way.)
#[derive(Debug)]
pub struct RequestBody<B> {
    prefix: Option<Bytes>,
    rest: Option<B>,
    trailers: Option<HeaderMap>,
}

impl<B> RequestBody<B> {
    /// The buffered bytes, then `rest` (the unread remainder, when the body was over the
    /// inspection limit), then the trailers.
    pub(crate) fn new(buffered: Bytes, rest: Option<B>, trailers: Option<HeaderMap>) -> Self {
        Self {
            prefix: (!buffered.is_empty()).then_some(buffered),
            rest,
            trailers,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into)));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let mut hint = rest.size_hint();
                hint.set_lower(hint.lower() + prefix);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
        }
    }
}

struct LeakState {
    stream: LeakStream,
    guard: Arc<LeakGuard>,
    /// The exchange's verdict, grown with what the scan finds.
    report: SharedVerdict,
    out: VecDeque<Bytes>,
    sse: bool,
    detect_only: bool,
    trailers: Option<HeaderMap>,
}

impl LeakState {
    /// Adds the findings of the last scan step to the shared verdict.
    fn report(&mut self) {
        let found = self.stream.take_findings();
        if found.is_empty() {
            return;
        }
        let (guard, detect_only) = (&self.guard, self.detect_only);
        self.report.update(|verdict| {
            for (kind, class) in found {
                // A kind is a short static name: recording it cannot fail but on the kind
                // limit, and then the action below still stands.
                let _ = match (guard.action(class), detect_only) {
                    (LeakAction::Redact, false) => verdict.add_redaction(kind, 1),
                    (LeakAction::Block, false) => {
                        verdict.escalate(WafAction::Block);
                        verdict.add_detection(kind, 1)
                    }
                    _ => {
                        verdict.escalate(WafAction::Detect);
                        verdict.add_detection(kind, 1)
                    }
                };
            }
        });
    }

    /// Scans a whole body at once: what it lets through, or `Err` when the guard blocks it
    /// (in detection-only mode the body as it was).
    fn whole(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let step = self.stream.push_last(&data);
        self.apply(step)?;
        if self.detect_only {
            return Ok(data);
        }
        // (One piece: the scan's output.)
        Ok(match self.out.len() {
            0 | 1 => self.out.pop_front().unwrap_or_default(),
            _ => self.out.drain(..).flatten().collect(),
        })
    }

    /// Queues what a scan step lets through. A block ends the body: with a final error event
    /// for SSE, otherwise with a body error so the client cannot take a cut body for a whole one.
    fn apply(&mut self, step: crate::leak::StreamOutput) -> Result<(), BoxError> {
        self.report();
        if self.detect_only {
            return Ok(());
        }
        if step.blocked {
            if self.sse {
                self.out.push_back(Bytes::from_static(SSE_CUT_OFF));
                return Ok(());
            }
            return Err("response withheld by the leak guard".into());
        }
        if !step.emit.is_empty() {
            self.out.push_back(Bytes::from(step.emit));
        }
        Ok(())
    }
}

impl std::fmt::Debug for LeakState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakState")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Kind<B> {
    Problem(Option<Bytes>),
    Inner {
        body: RequestBody<B>,
        leak: Option<Box<LeakState>>,
        done: bool,
    },
}

/// The response body: the inner body (scanned by the leak guard when one is configured), or a
/// problem document.
#[derive(Debug)]
pub struct ResponseBody<B> {
    kind: Kind<B>,
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Problem(Some(bytes)),
        }
    }
}

/// The final SSE event of a stream cut off by the leak guard.
const SSE_CUT_OFF: &[u8] = b"event: error\ndata: {\"error\":{\"type\":\"response_withheld\",\"message\":\"The response was withheld by policy.\"}}\n\n";

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Problem(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Inner {
                body, leak: None, ..
            } => Pin::new(body).poll_frame(cx),
            Kind::Inner {
                body,
                leak: Some(state),
                done,
            } => loop {
                if let Some(chunk) = state.out.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if *done {
                    return Poll::Ready(state.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        let step = match frame.into_data() {
                            Ok(data) if state.detect_only => {
                                let _ = state.stream.push(&data);
                                state.report();
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            Ok(data) => state.stream.push(&data),
                            // Trailers end the data: flush first, then pass them on.
                            Err(frame) => {
                                *done = true;
                                state.trailers = frame.into_trailers().ok();
                                state.stream.finish()
                            }
                        };
                        *done |= step.blocked;
                        if let Err(e) = state.apply(step) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        let step = state.stream.finish();
                        if let Err(e) = state.apply(step) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Problem(b) => b.is_none(),
            Kind::Inner {
                body, leak: None, ..
            } => body.is_end_stream(),
            Kind::Inner {
                leak: Some(state),
                done,
                ..
            } => *done && state.out.is_empty() && state.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Problem(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Inner {
                body, leak: None, ..
            } => body.size_hint(),
            Kind::Inner { .. } => SizeHint::default(),
        }
    }
}
