//! The one body type tokengate sends and receives, without boxing.
//!
//! A body is empty, a buffer we built (JSON, a form, a replayable request), or a stream
//! from hyper (the browser's upload or the upstream's response), passed through frame by
//! frame. Using an enum instead of a boxed trait object keeps the hot path free of an
//! allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

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
}

impl Body {
    /// A body of exactly these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
            Body::Prefixed(prefix, incoming) => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(incoming).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(incoming) => incoming.is_end_stream(),
            Body::Prefixed(prefix, incoming) => prefix.is_none() && incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Prefixed(prefix, incoming) => {
                let already = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let rest = incoming.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + already);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + already);
                }
                hint
            }
        }
    }
}
