//! The body of a response being stored: streamed to its client as it arrives while a copy
//! accumulates (never a whole-body wait); at its end the copy goes into the store and the
//! fill's lock is released. Over `max_object_bytes`, with trailers, or broken off, the copy is
//! dropped and the response just streams on.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::{
    entry::{Stored, StoredHead},
    key::CacheKey,
    lock::FillGuard,
    store::Store,
};
use crate::l7::pool::ProxyBody;

/// What is stored when the body ends.
pub struct Filling {
    pub store: Arc<Store>,
    pub key: CacheKey,
    pub head: StoredHead,
    pub limit: u64,
    /// Released after storing (waiters then find the entry).
    pub guard: Option<FillGuard>,
    /// Called once the entry is in (metrics: bytes held).
    pub on_stored: Option<Box<dyn FnOnce() + Send + Sync>>,
}

pub struct FillBody {
    inner: ProxyBody,
    filling: Option<Filling>,
    chunks: Vec<Bytes>,
    size: u64,
}

impl FillBody {
    /// `body`, copied into the store as it streams; a body already complete (empty) is
    /// stored at once.
    pub fn wrap(body: ProxyBody, filling: Filling) -> ProxyBody {
        if body.is_end_stream() {
            store(filling, Bytes::new());
            return body;
        }
        Self {
            inner: body,
            filling: Some(filling),
            chunks: Vec::new(),
            size: 0,
        }
        .boxed()
    }

    fn finish(&mut self) {
        let Some(filling) = self.filling.take() else {
            return;
        };
        let chunks = std::mem::take(&mut self.chunks);
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.size as usize);
                for c in chunks {
                    joined.extend_from_slice(&c);
                }
                joined.freeze()
            }
        };
        store(filling, body);
    }

    fn abandon(&mut self) {
        self.filling = None;
        self.chunks = Vec::new();
    }
}

fn store(filling: Filling, body: Bytes) {
    let Filling {
        store,
        key,
        head,
        guard,
        on_stored,
        ..
    } = filling;
    store.insert(key, Stored { head, body });
    drop(guard);
    if let Some(f) = on_stored {
        f();
    }
}

impl Body for FillBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match (frame.data_ref(), &this.filling) {
                (Some(data), Some(filling)) => {
                    this.size += data.len() as u64;
                    if this.size > filling.limit {
                        this.abandon();
                    } else {
                        this.chunks.push(data.clone());
                        if this.inner.is_end_stream() {
                            this.finish();
                        }
                    }
                }
                // Trailers: not kept, so not stored either.
                (None, Some(_)) => this.abandon(),
                _ => {}
            },
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.abandon(),
            Poll::Pending => {}
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
