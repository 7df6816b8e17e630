//! The one body type tokengate sends and receives, without boxing.
//!
//! A body is empty, a buffer we built (JSON, a form, a replayable request), a stream
//! from hyper (the upstream's response) passed through frame by frame, or a browser's
//! [`Upload`] streamed to the API under the body limit. Using an enum instead of a boxed
//! trait object keeps the hot path free of an allocation per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::codec::{Decoder, Encoder};
use crate::metrics::Metrics;
use crate::scan::Scanner;
use crate::server::h1::RequestBody;
use crate::upstream::h1::{BodyFault, ResponseBody};

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes.
    #[default]
    Empty,
    /// One buffer, sent once.
    Full(Option<Bytes>),
    /// A stream received from hyper, forwarded as it arrives.
    Stream(Incoming),
    /// Bytes already read from a body, then the rest of it (an upstream 401's start is
    /// read to tell whether it is about the token).
    Prefixed(Option<Bytes>, Box<Body>),
    /// An API answer's body read from tokengate's own HTTP/1.1 connection
    /// (`upstream::h1`).
    Upstream(Box<ResponseBody>),
    /// A browser's request body on its way to the API.
    /// Boxed: a rare body, which would otherwise double the size of every `Body`.
    Upload(Box<Upload>),
    /// An API response on its way to the browser, watched as it flows: cut off when it
    /// stalls for the request timeout, and searched for the session's tokens.
    Watched(Box<Watched>),
}

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection it came on failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The API's connection failed or framed the body wrongly.
    #[error(transparent)]
    Upstream(#[from] BodyFault),
    /// The browser's connection failed or framed its upload wrongly.
    #[error("the request body could not be read: {0}")]
    Request(BodyFault),
    /// A browser's upload went past `max_body_bytes`.
    #[error("the request body is larger than the limit")]
    TooLarge,
    /// The API stopped sending a response body for the request timeout.
    #[error("the response body stalled")]
    Stalled,
    /// A response body carried one of the session's tokens; it is cut off.
    #[error("the response body carried a token")]
    LeakBlocked,
    /// A response body is not valid in its content encoding.
    #[error("the response body is not valid in its content encoding")]
    Corrupt,
}

impl Body {
    /// A body of exactly these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }
}

/// A browser's request body as the server that read the request hands it over: from
/// tokengate's own HTTP/1.1 connection (`server::h1`), or from hyper's (HTTP/2, TLS).
#[derive(Debug)]
pub enum Inbound {
    /// No body (none framed, or `Content-Length: 0`).
    Empty,
    /// The whole body, which arrived with the head.
    Whole(Option<Bytes>),
    /// The rest of the body, still on the connection.
    Reading(Box<RequestBody>),
    /// A body hyper reads.
    Hyper(Incoming),
}

impl http_body::Body for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inbound::Empty => Poll::Ready(None),
            Inbound::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inbound::Reading(body) => {
                body.poll_data(cx).map(|frame| frame.map(|frame| frame.map_err(BodyError::Request)))
            }
            Inbound::Hyper(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Whole(bytes) => bytes.is_none(),
            Inbound::Reading(body) => body.is_end_stream(),
            Inbound::Hyper(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inbound::Reading(body) => body.size_hint(),
            Inbound::Hyper(incoming) => incoming.size_hint(),
        }
    }
}

/// What the sender of an [`Upload`] can learn about it after the fact: whether it went
/// past its limit (the answer is then 413, not a gateway error) and whether the
/// browser finished sending it (a timeout before that is the browser's, 408).
#[derive(Debug, Default)]
pub struct UploadWatch {
    exceeded: AtomicBool,
    finished: AtomicBool,
}

/// The one watch every body already whole shares: nothing left to wait for, never over
/// its limit, never written.
static WHOLE: UploadWatch = UploadWatch { exceeded: AtomicBool::new(false), finished: AtomicBool::new(true) };

/// The watch on a prepared call's upload. A body already whole (most calls: no body, or
/// one read before the call) has nothing to watch and shares [`WHOLE`], so the common call
/// allocates no watch and touches no reference count.
#[derive(Debug, Clone, Default)]
pub struct Watch(Option<Arc<UploadWatch>>);

impl Watch {
    /// The watch of a body already whole.
    pub fn whole() -> Self {
        Self(None)
    }

    /// The watch of an upload still on its way (shared with the [`Upload`] that sets it).
    pub fn on(watch: Arc<UploadWatch>) -> Self {
        Self(Some(watch))
    }
}

impl std::ops::Deref for Watch {
    type Target = UploadWatch;

    fn deref(&self) -> &UploadWatch {
        self.0.as_deref().unwrap_or(&WHOLE)
    }
}

impl UploadWatch {
    /// The upload went past its limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Acquire)
    }

    /// The browser sent the whole body.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// A browser's request body streamed to the API: what was already read, then the rest,
/// counted against `limit` as it flows (no whole-body buffer).
#[derive(Debug)]
pub struct Upload {
    prefix: Option<Bytes>,
    rest: Inbound,
    sent: u64,
    limit: u64,
    watch: Arc<UploadWatch>,
}

impl Upload {
    /// `prefix` (already read, counted) then `rest`, at most `limit` bytes in all.
    pub fn new(prefix: Option<Bytes>, rest: Inbound, limit: u64, watch: Arc<UploadWatch>) -> Self {
        Self { prefix, rest, sent: 0, limit, watch }
    }

    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match self.prefix.take() {
            Some(bytes) => Some(Ok(Frame::data(bytes))),
            None => match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            },
        };
        match frame {
            Some(Ok(frame)) => {
                let size = frame.data_ref().map_or(0, |data| data.len() as u64);
                self.sent = self.sent.saturating_add(size);
                if self.sent > self.limit {
                    self.watch.exceeded.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyError::TooLarge)));
                }
                if self.rest.is_end_stream() {
                    self.watch.finished.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => {
                self.watch.finished.store(true, Ordering::Release);
                Poll::Ready(None)
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Trailers from the API are dropped: a browser has no use for them, and a page can
        // read them where the leak guard never looks.
        let hyper_frame = |poll: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| match poll {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => Poll::Ready(None),
            poll => poll.map(|frame| frame.map(|frame| frame.map_err(BodyError::from))),
        };
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(incoming) => hyper_frame(Pin::new(incoming).poll_frame(cx)),
            Body::Prefixed(prefix, rest) => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Body::Upstream(body) => {
                body.poll_data(cx).map(|frame| frame.map(|frame| frame.map_err(BodyError::from)))
            }
            Body::Upload(upload) => upload.poll_upload(cx),
            Body::Watched(watched) => watched.poll_watched(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(incoming) => incoming.is_end_stream(),
            Body::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            Body::Upstream(body) => body.is_end_stream(),
            Body::Upload(upload) => upload.prefix.is_none() && upload.rest.is_end_stream(),
            // Only once the stage's tail (an encoder's end) went out, never from the inner
            // stream alone.
            Body::Watched(watched) => watched.first.is_none() && watched.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Prefixed(prefix, rest) => with_prefix(prefix.as_ref(), rest.size_hint()),
            Body::Upstream(body) => body.size_hint(),
            Body::Upload(upload) => with_prefix(upload.prefix.as_ref(), upload.rest.size_hint()),
            // A decoded or re-encoded body has a length of its own, unknown until its end.
            Body::Watched(watched) if watched.stage.changes_length() => SizeHint::new(),
            Body::Watched(watched) => with_prefix(watched.first.as_ref(), watched.inner.size_hint()),
        }
    }
}

fn with_prefix(prefix: Option<&Bytes>, rest: SizeHint) -> SizeHint {
    let already = prefix.map_or(0, |b| b.len() as u64);
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + already);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + already);
    }
    hint
}

/// What a watched body reports to, for the metrics and the security log.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub metrics: Arc<Metrics>,
    pub request_id: crate::context::RequestId,
}

/// What happens to each frame of a response body on its way out: decoded (when the API
/// compressed it), searched for the session's tokens, and encoded for the browser (or the
/// API's own bytes passed on when the browser takes their encoding).
#[derive(Debug, Default)]
pub struct Stage {
    pub decoder: Option<Decoder>,
    pub scanner: Option<Scanner>,
    pub encoder: Option<Encoder>,
    /// Send the API's bytes as they came (after searching what they decode to).
    pub passthrough: bool,
}

/// Why a stage stopped a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The body carried one of the session's tokens.
    Leak,
    /// The body is not valid in its content encoding (or decodes to too much).
    Corrupt,
}

impl Stage {
    /// Whether the bytes that go out differ in length from the API's.
    pub fn changes_length(&self) -> bool {
        !self.passthrough && (self.decoder.is_some() || self.encoder.is_some())
    }

    /// What goes out for one frame from the API.
    pub fn process(&mut self, raw: &Bytes) -> Result<Bytes, Cut> {
        self.feed(raw, false)
    }

    /// [`Stage::process`] for a frame known to be the body's last (a body read whole):
    /// the scanner keeps no seam after it.
    pub fn process_last(&mut self, raw: &Bytes) -> Result<Bytes, Cut> {
        self.feed(raw, true)
    }

    fn feed(&mut self, raw: &Bytes, last: bool) -> Result<Bytes, Cut> {
        let decoded = match &mut self.decoder {
            Some(decoder) => decoder.push(raw).map_err(|_| Cut::Corrupt)?,
            None => raw.clone(),
        };
        // With a decoder, what it holds back still comes at `finish`: not the last bytes.
        self.out(raw.clone(), decoded, last && self.decoder.is_none())
    }

    /// What goes out at the end of the body.
    pub fn finish(&mut self) -> Result<Bytes, Cut> {
        let decoded = match self.decoder.take() {
            Some(decoder) => decoder.finish().map_err(|_| Cut::Corrupt)?,
            None => Bytes::new(),
        };
        let mut out = self.out(Bytes::new(), decoded, true)?.to_vec();
        if let Some(encoder) = self.encoder.take() {
            out.extend_from_slice(&encoder.finish().map_err(|_| Cut::Corrupt)?);
        }
        Ok(Bytes::from(out))
    }

    fn out(&mut self, raw: Bytes, decoded: Bytes, last: bool) -> Result<Bytes, Cut> {
        if let Some(scanner) = &mut self.scanner {
            if !decoded.is_empty() {
                let searched = if last { scanner.push_last(&decoded) } else { scanner.push(&decoded) };
                searched.map_err(|_| Cut::Leak)?;
            }
        }
        if self.passthrough {
            return Ok(raw);
        }
        match &mut self.encoder {
            Some(encoder) if !decoded.is_empty() => encoder.push(&decoded).map_err(|_| Cut::Corrupt),
            _ => Ok(decoded),
        }
    }
}

/// An API response body on its way to the browser (see [`Body::Watched`]). Frames go out
/// as they arrive, each after its [`Stage`]; a body that stops flowing for `idle` is cut
/// off, and so is one whose frame completes a token. A cut-off body is an error to
/// hyper, which then resets the connection (HTTP/1.1) or the stream (HTTP/2): the browser
/// never sees the response complete.
#[derive(Debug)]
pub struct Watched {
    /// Bytes ready to go out (what the first frame became, read before the head went out).
    first: Option<Bytes>,
    inner: Body,
    stage: Stage,
    ended: bool,
    idle: std::time::Duration,
    /// The stall timer, made the first time the API keeps the body waiting (a body that
    /// never waits costs no timer), reset by every frame after that.
    timer: Option<Pin<Box<Sleep>>>,
    reporter: Reporter,
}

impl Watched {
    /// Watches `inner`, which follows `first` (already through `stage`).
    pub fn new(
        first: Option<Bytes>,
        inner: Body,
        stage: Stage,
        idle: std::time::Duration,
        reporter: Reporter,
    ) -> Self {
        Self { first, inner, stage, ended: false, idle, timer: None, reporter }
    }

    fn poll_watched(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if let Some(first) = self.first.take().filter(|bytes| !bytes.is_empty()) {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let outcome = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return self.poll_stall(cx),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = &mut self.timer {
                        timer.as_mut().reset(Instant::now() + self.idle);
                    }
                    let Some(data) = frame.data_ref() else { continue };
                    self.stage.process(data)
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    self.stage.finish()
                }
            };
            match outcome {
                Ok(bytes) => self.first = Some(bytes),
                Err(cut) => return Poll::Ready(Some(Err(self.report(cut)))),
            }
        }
    }

    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let idle = self.idle;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.reporter.metrics.record_body_stalled();
        tracing::warn!(
            request_id = self.reporter.request_id.as_str(),
            "the API stopped sending the response body; cut off"
        );
        Poll::Ready(Some(Err(BodyError::Stalled)))
    }

    fn report(&self, cut: Cut) -> BodyError {
        let request_id = self.reporter.request_id.as_str();
        match cut {
            Cut::Leak => {
                self.reporter.metrics.record_leak_blocked();
                tracing::warn!(
                    target: "tokengate::security",
                    event = "token_leak_blocked",
                    request_id,
                    place = "body",
                    "an upstream response body carried the session's token; the response was cut off"
                );
                BodyError::LeakBlocked
            }
            Cut::Corrupt => {
                tracing::warn!(
                    request_id,
                    "the API's response body is not valid in its content encoding; cut off"
                );
                BodyError::Corrupt
            }
        }
    }
}
