//! The request body on its way upstream, streamed with the listener's limits: at most
//! `max_body_bytes` in all (chunked bodies declare no length, so the bytes are counted), and
//! each next piece within `body_timeout` (a slow or stalled client). A broken limit, or a
//! client body hyper finds malformed (bad chunk framing) or cut short, fails the upstream
//! body, so the backend never gets a complete request; `BodyWatch` tells the proxy which, for
//! its answer (413, 408, 400) when no response has started.
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderValue},
};
use tokio::time::{Instant, Sleep};

use super::{config::L7Config, pool::ProxyBody};

/// A request body as sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BodyError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {0} bytes")]
    TooLarge(u64),
    #[error("no request body bytes for {0:?}")]
    TimedOut(Duration),
    #[error("request body malformed or cut short")]
    Client,
    /// Request buffering (route `buffer_request`): its temporary file failed.
    #[error("request body could not be buffered")]
    Buffer,
}

impl BodyError {
    /// The answer to the client when no response has started.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Client => StatusCode::BAD_REQUEST,
            Self::Buffer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The first limit a body broke, if any (shared between the body and the proxy).
#[derive(Clone, Debug, Default)]
pub struct BodyWatch(Arc<OnceLock<BodyError>>);

impl BodyWatch {
    pub fn broken(&self) -> Option<BodyError> {
        self.0.get().copied()
    }
}

/// A listener's request body limits.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

pub struct LimitedBody {
    inner: Incoming,
    limits: BodyLimits,
    seen: u64,
    /// Armed at the first poll (when upstream starts reading), reset on every frame.
    deadline: Option<Pin<Box<Sleep>>>,
    watch: BodyWatch,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limits: BodyLimits, watch: BodyWatch) -> Self {
        Self {
            inner,
            limits,
            seen: 0,
            deadline: None,
            watch,
        }
    }

    fn fail(&mut self, err: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let _ = self.watch.0.set(err);
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let timeout = this.limits.timeout;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limits.max_bytes {
                        return this.fail(BodyError::TooLarge(this.limits.max_bytes));
                    }
                }
                if let Some(deadline) = &mut this.deadline {
                    deadline.as_mut().reset(Instant::now() + timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::debug!(%err, "request body failed");
                this.fail(BodyError::Client)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(BodyError::TimedOut(timeout)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Each listener's limits, by name.
pub fn limits_by_listener(config: &L7Config) -> HashMap<String, BodyLimits> {
    config
        .listeners
        .iter()
        .map(|l| {
            let limits = BodyLimits {
                max_bytes: l.max_body_bytes,
                timeout: l.body_timeout,
            };
            (l.name.clone(), limits)
        })
        .collect()
}

/// The client's body as sent upstream: limited when the listener has limits.
pub fn limited(body: Incoming, limits: Option<BodyLimits>, watch: &BodyWatch) -> UpstreamBody {
    match limits {
        Some(limits) => LimitedBody::new(body, limits, watch.clone()).boxed(),
        None => body.map_err(|_| BodyError::Client).boxed(),
    }
}

/// The answer to a request whose body broke a limit before any response: the status, and the
/// connection closed (the rest of the body is not read).
pub fn refusal(err: BodyError) -> Response<ProxyBody> {
    let mut response = super::answer::text_answer(err.status(), Bytes::from(format!("{err}\n")));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
