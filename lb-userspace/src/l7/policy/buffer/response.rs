//! `buffer_response`: a task reads the backend's response body ahead of the client, holding
//! at most `limit` bytes it has read and the client has not taken (plus the one frame it is
//! waiting to hand over). A body that fits is read to its end at the backend's pace, and its
//! pooled connection (`LeasedBody`, dropped with the body when the task ends) goes back while
//! the client is still reading; a longer one streams with `limit` bytes of read-ahead.
//! When the client goes away the task ends and drops the backend body at once.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    Response,
    body::{Body, Frame, SizeHint},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::l7::pool::ProxyBody;

type Item = (
    Result<Frame<Bytes>, hyper::Error>,
    Option<OwnedSemaphorePermit>,
);

/// `response` with its body read ahead by up to `limit` bytes; a body already at its end
/// (HEAD, 204, 304) is left as it is.
pub fn read_ahead(response: Response<ProxyBody>, limit: usize) -> Response<ProxyBody> {
    if response.body().is_end_stream() {
        return response;
    }
    response.map(|body| ReadAhead::start(body, limit).boxed())
}

/// The client's side: frames as the task read them.
pub struct ReadAhead {
    frames: mpsc::UnboundedReceiver<Item>,
    /// What is left of the backend body's size hint.
    hint: SizeHint,
    done: bool,
}

impl ReadAhead {
    pub fn start(body: ProxyBody, limit: usize) -> Self {
        let hint = body.size_hint();
        // Permits are bytes held; a frame larger than the whole allowance takes all of it.
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let room = Arc::new(Semaphore::new(limit));
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(fill(body, room, limit, tx));
        Self {
            frames,
            hint,
            done: false,
        }
    }
}

/// Reads `body` to its end (or its first error) into `tx`, waiting for room before handing
/// over each frame; returns (dropping `body`) as soon as the client side is gone.
async fn fill(
    mut body: ProxyBody,
    room: Arc<Semaphore>,
    limit: usize,
    tx: mpsc::UnboundedSender<Item>,
) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tx.closed() => return,
        };
        let Some(frame) = frame else {
            return;
        };
        let size = frame
            .as_ref()
            .ok()
            .and_then(Frame::data_ref)
            .map_or(0, Bytes::len);
        let failed = frame.is_err();
        let permit = match size {
            0 => None,
            // `limit` fits in u32 (clamped in `start`).
            size => {
                let want = size.min(limit) as u32;
                tokio::select! {
                    permit = room.clone().acquire_many_owned(want) => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        };
        // At its end the body goes at once (as hyper's server drops a body that says it has
        // ended), so a pooled connection is back before the client can have the last byte.
        if tx.send((frame, permit)).is_err() || failed || body.is_end_stream() {
            return;
        }
    }
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match this.frames.poll_recv(cx) {
            // The permit goes with the frame: its bytes are the client's now.
            Poll::Ready(Some((frame, _permit))) => {
                if let (Ok(frame), Some(exact)) = (&frame, this.hint.exact()) {
                    let len = frame.data_ref().map_or(0, Bytes::len) as u64;
                    this.hint = SizeHint::with_exact(exact.saturating_sub(len));
                }
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.hint = SizeHint::with_exact(0);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// An endless backend body of 1 KiB frames, counting the frames read from it, and
    /// whether it was dropped.
    fn endless(read: Arc<AtomicUsize>, dropped: Arc<AtomicUsize>) -> ProxyBody {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Count(dropped);
        let stream = futures_util::stream::repeat_with(move || {
            let _ = &count;
            read.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[7; 1024])))
        });
        StreamBody::new(stream)
            .map_err(|never| match never {})
            .boxed()
    }

    /// Lets the (current-thread) runtime run the task until it waits.
    async fn settle() {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn reads_ahead_no_further_than_the_limit_and_stops_when_the_client_goes() {
        let read = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut body = ReadAhead::start(endless(read.clone(), dropped.clone()), 8 * 1024);
        settle().await;
        // 8 frames fill the allowance; a ninth waits for room.
        assert_eq!(read.load(Ordering::SeqCst), 9);
        let frame = body.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.data_ref().map(Bytes::len), Some(1024));
        settle().await;
        assert_eq!(
            read.load(Ordering::SeqCst),
            10,
            "one frame taken, one more read"
        );
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        drop(body);
        settle().await;
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the backend body is let go"
        );
    }

    #[tokio::test]
    async fn a_body_that_fits_is_read_to_its_end_and_let_go_before_the_client_reads() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        /// Fires when the backend body is dropped (as a `LeasedBody` returns its connection).
        struct Released(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Released {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let released = Released(Some(tx));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i; 1000]))))
            .collect();
        let stream = futures_util::stream::iter(frames).map(move |frame| {
            let _ = &released;
            frame
        });
        let backend = StreamBody::new(stream)
            .map_err(|never| match never {})
            .boxed();
        let body = ReadAhead::start(backend, 1 << 20);
        rx.await
            .expect("the backend body was read to its end and dropped");
        let all = body.collect().await.expect("body").to_bytes();
        assert_eq!(all.len(), 4000);
        assert!(all[..1000].iter().all(|b| *b == 0) && all[3000..].iter().all(|b| *b == 3));
    }

    #[tokio::test]
    async fn an_ended_body_is_not_wrapped() {
        let response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let response = read_ahead(response, 10);
        assert!(response.body().is_end_stream());
    }
}
