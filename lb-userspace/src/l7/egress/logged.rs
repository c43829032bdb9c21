//! A response body that counts the bytes it passes on and reports them once, when it is
//! dropped (after its last frame, or when the client went away): the access log line of an
//! absolute-form or inspected request is written then, with `bytes_down`.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::super::pool::ProxyBody;

pub(super) struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

/// `inner`, with `done(bytes sent)` called when it is dropped.
pub(super) fn wrap(inner: ProxyBody, done: impl FnOnce(u64) + Send + Sync + 'static) -> ProxyBody {
    LoggedBody {
        inner,
        bytes: 0,
        done: Some(Box::new(done)),
    }
    .boxed()
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}
