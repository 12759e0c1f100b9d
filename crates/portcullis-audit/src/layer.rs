//! [`AuditLayer`]: one record per request, written when the response body ends (or the
//! exchange is abandoned), with what every layer further in decided.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use portcullis_core::{Problem, Reason, SharedVerdict};
use tokio_util::sync::PollSemaphore;

use crate::event::{Captured, Completion};
use crate::writer::{Audit, Msg};

/// The request id header, read (when valid) and set on the request and the response.
pub const REQUEST_ID: &str = "x-request-id";

static REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID);

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Records every request that passes through it; meant to be the outermost layer, so that
/// every rejection of the layers further in is recorded too.
#[derive(Debug, Clone)]
pub struct AuditLayer {
    audit: Audit,
}

impl AuditLayer {
    /// A layer writing to `audit`.
    pub fn new(audit: Audit) -> Self {
        Self { audit }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// The service of [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    inner: S,
    audit: Audit,
}

impl<S, B, ResB> tower::Service<Request<B>> for AuditService<S>
where
    S: tower::Service<Request<CountedBody<B>>, Response = Response<ResB>>,
    B: Body,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<AuditBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let id = match request
            .headers()
            .get(&REQUEST_ID_NAME)
            .filter(|v| valid_id(v))
        {
            Some(v) => v.clone(),
            None => {
                let v = self.audit.new_id();
                request
                    .headers_mut()
                    .insert(REQUEST_ID_NAME.clone(), v.clone());
                v
            }
        };
        let captured = Captured::from_request(&request, &self.audit.shared.headers, id.clone());
        let count = Arc::new(AtomicU64::new(0));
        let pending = Pending {
            captured: Box::new(captured),
            start,
            count: count.clone(),
            id,
            audit: self.audit.clone(),
        };
        if self.audit.refuses() {
            let response: Response<AuditBody<ResB>> =
                Problem::new(Reason::AuditUnavailable).into_response();
            return ResponseFuture {
                state: State::Refused {
                    response: Some(response),
                },
                pending: Some(pending),
            };
        }
        let request = request.map(|inner| CountedBody { inner, count });
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(request),
            },
            pending: Some(pending),
        }
    }
}

/// Whether a propagated request id may be used as it is: 1 to 128 visible ASCII bytes.
fn valid_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// An exchange on its way to its record.
struct Pending {
    captured: Box<Captured>,
    start: Instant,
    count: Arc<AtomicU64>,
    id: HeaderValue,
    audit: Audit,
}

impl Pending {
    fn finish(&mut self, completion: Completion) {
        let c = &mut self.captured;
        c.completion = completion;
        c.duration = self.start.elapsed();
        c.bytes_in = self.count.load(Ordering::Relaxed);
    }

    /// Records the exchange without waiting for room in the queue.
    fn record_now(mut self, completion: Completion) {
        self.finish(completion);
        self.audit.try_record(self.captured);
    }
}

pin_project! {
    /// Response future of [`AuditService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        pending: Option<Pending>,
    }

    impl<F, B> PinnedDrop for ResponseFuture<F, B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the response: the client went away.
            if let Some(pending) = this.project().pending.take() {
                pending.record_now(Completion::Cancelled);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<AuditBody<B>>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<AuditBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.state.project() {
            StateProj::Inner { future } => match ready!(future.poll(cx)) {
                Ok(response) => response.map(|body| AuditBody {
                    kind: Kind::Inner(body),
                    ending: None,
                }),
                Err(e) => {
                    if let Some(pending) = this.pending.take() {
                        pending.record_now(Completion::Error);
                    }
                    return Poll::Ready(Err(e));
                }
            },
            StateProj::Refused { response } => match response.take() {
                Some(r) => r,
                None => return Poll::Pending,
            },
        };
        let Some(mut pending) = this.pending.take() else {
            return Poll::Pending;
        };
        let (mut parts, mut body) = response.into_parts();
        pending.captured.response_time = Some(pending.start.elapsed());
        pending
            .captured
            .take_response(parts.status.as_u16(), &parts.extensions);
        parts
            .headers
            .insert(REQUEST_ID_NAME.clone(), pending.id.clone());
        body.ending = Some(Ending {
            shared: parts.extensions.get::<SharedVerdict>().cloned(),
            pending,
            sender: None,
        });
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The record of an exchange whose response is streaming.
struct Ending {
    pending: Pending,
    /// The WAF's verdict as its response scan grows it: read at the end.
    shared: Option<SharedVerdict>,
    /// Set once the body has ended and the record waits for room in the queue.
    sender: Option<PollSemaphore>,
}

impl Ending {
    fn finish(&mut self, completion: Completion) {
        self.pending.finish(completion);
        if let Some(shared) = &self.shared {
            self.pending.captured.waf = Some(shared.snapshot());
        }
    }
}

enum Kind<B> {
    Inner(B),
    Problem(Option<Bytes>),
}

/// The response body: the inner body (or the audit layer's own 503), counted; the record is
/// written when it ends, fails or is dropped.
pub struct AuditBody<B> {
    kind: Kind<B>,
    ending: Option<Ending>,
}

impl<B> std::fmt::Debug for AuditBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBody").finish_non_exhaustive()
    }
}

impl<B> From<Bytes> for AuditBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Problem(Some(bytes)),
            ending: None,
        }
    }
}

impl<B> Drop for AuditBody<B> {
    fn drop(&mut self) {
        if let Some(mut ending) = self.ending.take() {
            // Dropped before its end (or while waiting for room): record what there is.
            let completion = if ending.sender.is_some() {
                Completion::Complete
            } else {
                Completion::Aborted
            };
            ending.finish(completion);
            ending.pending.audit.try_record(ending.pending.captured);
        }
    }
}

impl<B> Body for AuditBody<B>
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
        let this = &mut *self;
        loop {
            if let Some(ending) = this.ending.as_mut()
                && let Some(sender) = ending.sender.as_mut()
            {
                // The body has ended: its record waits for room (the `block` policy).
                let permit = ready!(sender.poll_acquire(cx));
                if let Some(ending) = this.ending.take() {
                    let pending = ending.pending;
                    match permit {
                        Some(permit) => {
                            permit.forget();
                            pending.audit.queue.push(Msg::Event(pending.captured));
                        }
                        // The log has shut down.
                        None => pending.audit.count_drop(),
                    }
                }
                return Poll::Ready(None);
            }
            let frame = match &mut this.kind {
                Kind::Problem(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
                Kind::Inner(body) => ready!(Pin::new(body).poll_frame(cx)),
            };
            match frame {
                Some(Ok(frame)) => {
                    if let (Some(data), Some(ending)) = (frame.data_ref(), this.ending.as_mut()) {
                        ending.pending.captured.bytes_out += data.remaining() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    if let Some(mut ending) = this.ending.take() {
                        ending.finish(Completion::BodyError);
                        ending.pending.audit.try_record(ending.pending.captured);
                    }
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    let Some(ending) = this.ending.as_mut() else {
                        return Poll::Ready(None);
                    };
                    ending.finish(Completion::Complete);
                    let queue = &ending.pending.audit.queue;
                    let room = queue.permits.try_acquire().map(|p| p.forget()).is_ok();
                    if room {
                        // Room at once (the usual case).
                        if let Some(ending) = this.ending.take() {
                            let audit = ending.pending.audit;
                            audit.queue.push(Msg::Event(ending.pending.captured));
                        }
                        return Poll::Ready(None);
                    }
                    if ending.pending.audit.blocks() {
                        ending.sender = Some(PollSemaphore::new(
                            ending.pending.audit.queue.permits.clone(),
                        ));
                        continue;
                    }
                    if let Some(ending) = this.ending.take() {
                        ending.pending.audit.try_record(ending.pending.captured);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not before the record is queued: the last poll writes it.
        self.ending.is_none()
            && match &self.kind {
                Kind::Inner(b) => b.is_end_stream(),
                Kind::Problem(b) => b.is_none(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(b) => b.size_hint(),
            Kind::Problem(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

pin_project! {
    /// The request body handed to the inner service, unchanged, counted.
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            this.count
                .fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
