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

use crate::metrics::Metrics;
use crate::scan::Scanner;

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
    /// Bytes already read from a stream, then the rest of that stream (the leak guard
    /// reads a prefix before deciding a body is too long to scan).
    Prefixed(Option<Bytes>, Incoming),
    /// A browser's request body on its way to the API.
    Upload(Upload),
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
    /// A browser's upload went past `max_body_bytes`.
    #[error("the request body is larger than the limit")]
    TooLarge,
    /// The API stopped sending a response body for the request timeout.
    #[error("the response body stalled")]
    Stalled,
    /// A response body carried one of the session's tokens; it is cut off.
    #[error("the response body carried a token")]
    LeakBlocked,
}

impl Body {
    /// A body of exactly these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
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

impl UploadWatch {
    /// A watch on a body that is already whole (nothing left to wait for).
    pub fn finished() -> Arc<Self> {
        Arc::new(Self { exceeded: AtomicBool::new(false), finished: AtomicBool::new(true) })
    }

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
    rest: Incoming,
    sent: u64,
    limit: u64,
    watch: Arc<UploadWatch>,
}

impl Upload {
    /// `prefix` (already read, counted) then `rest`, at most `limit` bytes in all.
    pub fn new(prefix: Option<Bytes>, rest: Incoming, limit: u64, watch: Arc<UploadWatch>) -> Self {
        Self { prefix, rest, sent: 0, limit, watch }
    }

    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match self.prefix.take() {
            Some(bytes) => Some(Ok(Frame::data(bytes))),
            None => match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame.map(|frame| frame.map_err(BodyError::from)),
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
            Body::Prefixed(prefix, incoming) => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => hyper_frame(Pin::new(incoming).poll_frame(cx)),
            },
            Body::Upload(upload) => upload.poll_upload(cx),
            Body::Watched(watched) => watched.poll_watched(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(incoming) => incoming.is_end_stream(),
            Body::Prefixed(prefix, incoming) => prefix.is_none() && incoming.is_end_stream(),
            Body::Upload(upload) => upload.prefix.is_none() && upload.rest.is_end_stream(),
            Body::Watched(watched) => watched.first.is_none() && watched.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Prefixed(prefix, incoming) => with_prefix(prefix.as_ref(), incoming.size_hint()),
            Body::Upload(upload) => with_prefix(upload.prefix.as_ref(), upload.rest.size_hint()),
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
    pub request_id: http::HeaderValue,
}

/// An API response body on its way to the browser (see [`Body::Watched`]). Frames go out
/// as they arrive, each after it was searched; a body that stops flowing for `idle` is
/// cut off, and so is one whose frame completes a token. A cut-off body is an error to
/// hyper, which then resets the connection (HTTP/1.1) or the stream (HTTP/2): the browser
/// never sees the response complete.
#[derive(Debug)]
pub struct Watched {
    /// A frame read (and searched) before the head went out.
    first: Option<Bytes>,
    inner: Body,
    scanner: Option<Scanner>,
    idle: std::time::Duration,
    timer: Pin<Box<Sleep>>,
    reporter: Reporter,
}

impl Watched {
    /// Watches `inner`, which follows `first` (already searched by `scanner`).
    pub fn new(
        first: Option<Bytes>,
        inner: Body,
        scanner: Option<Scanner>,
        idle: std::time::Duration,
        reporter: Reporter,
    ) -> Self {
        let timer = Box::pin(tokio::time::sleep(idle));
        Self { first, inner, scanner, idle, timer, reporter }
    }

    fn poll_watched(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.reporter.metrics.record_body_stalled();
                    tracing::warn!(
                        request_id = self.reporter.request_id.to_str().unwrap_or(""),
                        "the API stopped sending the response body; cut off"
                    );
                    return Poll::Ready(Some(Err(BodyError::Stalled)));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.as_mut().reset(Instant::now() + self.idle);
                let Some(data) = frame.data_ref() else { return Poll::Ready(Some(Ok(frame))) };
                if let Some(scanner) = &mut self.scanner {
                    if scanner.push(data).is_err() {
                        self.report_leak();
                        return Poll::Ready(Some(Err(BodyError::LeakBlocked)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn report_leak(&self) {
        self.reporter.metrics.record_leak_blocked();
        tracing::warn!(
            target: "tokengate::security",
            event = "token_leak_blocked",
            request_id = self.reporter.request_id.to_str().unwrap_or(""),
            place = "body",
            "an upstream response body carried the session's token; the response was cut off"
        );
    }
}
