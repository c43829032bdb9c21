//! The compressed response body: the backend's body as an `AsyncBufRead` (tokio-util's
//! `StreamReader`), read through an `async-compression` encoder and cut into frames again
//! (`ReaderStream`). It streams: each frame is what the encoder produced from the data that
//! has arrived; nothing waits for the whole body.
//!
//! Errors: a backend body error travels through the encoder inside an `io::Error` and comes
//! out as the same `hyper::Error`, so the client sees the body fail as it would uncompressed.
//! Trailers are dropped (a compressed body is new content; gRPC is not a compressed type).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use async_compression::{
    Level as CodecLevel,
    tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder},
};
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::{Encoding, Level};
use crate::l7::pool::ProxyBody;

/// Compressed output is cut into frames of at most this many bytes.
const FRAME: usize = 16 * 1024;

type Input = StreamReader<Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync>>, Bytes>;
type Encoder = Pin<Box<dyn AsyncRead + Send + Sync>>;

/// Why a compressed body stopped (the encoder's own failure, not the backend's).
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compression failed: {0}")]
    Encoder(io::Error),
}

pub struct CompressedBody {
    out: ReaderStream<Encoder>,
    done: bool,
}

impl CompressedBody {
    /// `body`, compressed with `encoding` at `level`.
    pub fn wrap(body: ProxyBody, encoding: Encoding, level: Level) -> ProxyBody {
        let data: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync>> =
            Box::pin(body.into_data_stream().map_err(io::Error::other));
        let input: Input = StreamReader::new(data);
        let encoder: Encoder = match encoding {
            Encoding::Gzip => Box::pin(GzipEncoder::with_quality(
                input,
                codec_level(encoding, level),
            )),
            Encoding::Brotli => Box::pin(BrotliEncoder::with_quality(
                input,
                codec_level(encoding, level),
            )),
            Encoding::Zstd => Box::pin(ZstdEncoder::with_quality(
                input,
                codec_level(encoding, level),
            )),
        };
        Self {
            out: ReaderStream::with_capacity(encoder, FRAME),
            done: false,
        }
        .boxed()
    }
}

/// lb's levels as each codec's: default is gzip 6, zstd 3 (the libraries' defaults) and
/// brotli 4 (its library default, 11, costs ~20x the CPU of 4 for a few percent).
fn codec_level(encoding: Encoding, level: Level) -> CodecLevel {
    match (encoding, level) {
        (_, Level::Fastest) => CodecLevel::Fastest,
        (_, Level::Best) => CodecLevel::Best,
        (Encoding::Brotli, Level::Default) => CodecLevel::Precise(4),
        (_, Level::Default) => CodecLevel::Default,
    }
}

impl Body for CompressedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.out).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                // The backend's own error, unwrapped again.
                if e.get_ref().is_some_and(|inner| inner.is::<hyper::Error>()) {
                    if let Some(Ok(hyper)) = e.into_inner().map(|i| i.downcast::<hyper::Error>()) {
                        return Poll::Ready(Some(Err(*hyper)));
                    }
                    return Poll::Ready(None);
                }
                // An encoder failure has no hyper::Error to carry it: the body ends here,
                // and the client's decoder sees a truncated stream.
                tracing::warn!(error = %CompressError::Encoder(e), "compressed response body cut short");
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
