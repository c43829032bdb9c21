//! `buffer_request`: the whole request body read before the upstream phase, the first
//! `memory` bytes in memory and the rest in an unlinked temporary file, then sent (and, for a
//! retry, sent again) from there with a Content-Length.
use std::{
    future::Future,
    io,
    os::unix::fs::FileExt,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    Response,
    body::{Body, Frame, SizeHint},
    header::{self, HeaderValue},
};
use tokio::{io::AsyncWriteExt, task::JoinHandle};

use super::RequestBuffering;
use crate::l7::{
    body::{self, BodyError, UpstreamBody},
    forward::{Upstream, idempotent},
    pool::ProxyBody,
};

/// Bytes read back from the temporary file per frame.
const READ_CHUNK: u64 = 64 << 10;

/// A request body read to its end.
#[derive(Debug)]
pub struct Buffered {
    /// The first bytes, up to the route's `memory`.
    memory: Vec<Bytes>,
    /// The rest, from offset 0 (an unlinked file: it goes when the last handle does).
    file: Option<Arc<std::fs::File>>,
    file_len: u64,
    /// Memory and file together.
    len: u64,
}

impl Buffered {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The body from its start, as sent upstream (once per attempt).
    pub fn body(self: &Arc<Self>) -> UpstreamBody {
        Replay {
            remaining: self.len(),
            buffered: self.clone(),
            chunk: 0,
            offset: 0,
            reading: None,
        }
        .boxed()
    }
}

/// Reads `upstream`'s body to its end (within the listener's limits, which its body already
/// enforces) and makes the request send it from the buffer with a Content-Length; an
/// idempotent request becomes retryable. Err: the answer to the client (413, 408, 400 for a
/// client that broke off, 500 when the temporary file failed); nothing went upstream.
pub(in crate::l7) async fn buffer(
    upstream: &mut Upstream,
    config: &RequestBuffering,
) -> Result<(), Response<ProxyBody>> {
    let body = std::mem::replace(
        &mut upstream.body,
        Empty::new().map_err(|never| match never {}).boxed(),
    );
    let buffered = match read(body, config).await {
        Ok(buffered) => Arc::new(buffered),
        Err(err) => {
            tracing::debug!(%err, "request body not buffered");
            return Err(body::refusal(err));
        }
    };
    let headers = &mut upstream.parts.headers;
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::EXPECT);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(buffered.len()));
    upstream.retryable = idempotent(&upstream.parts.method);
    upstream.body = buffered.body();
    upstream.replay = Some(buffered);
    Ok(())
}

/// Reads `body` to its end: in memory up to `config.memory` bytes, the rest to a new temporary
/// file. Trailers are dropped.
pub async fn read(
    mut body: UpstreamBody,
    config: &RequestBuffering,
) -> Result<Buffered, BodyError> {
    let mut memory = Vec::new();
    let mut in_memory = 0usize;
    let mut file: Option<tokio::fs::File> = None;
    let mut file_len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame?.into_data() else {
            continue;
        };
        let room = config.memory - in_memory;
        if room > 0 {
            let head = data.split_to(room.min(data.len()));
            in_memory += head.len();
            if !head.is_empty() {
                memory.push(head);
            }
        }
        if data.is_empty() {
            continue;
        }
        let out = match &mut file {
            Some(f) => f,
            None => file.insert(
                temp_file(config.temp_dir.as_ref())
                    .await
                    .map_err(spill_error)?,
            ),
        };
        out.write_all(&data).await.map_err(spill_error)?;
        file_len += data.len() as u64;
    }
    let file = match file {
        Some(mut f) => {
            f.flush().await.map_err(spill_error)?;
            Some(Arc::new(f.into_std().await))
        }
        None => None,
    };
    Ok(Buffered {
        memory,
        file,
        file_len,
        len: in_memory as u64 + file_len,
    })
}

fn spill_error(err: io::Error) -> BodyError {
    tracing::warn!(%err, "request buffering: temporary file failed");
    BodyError::Buffer
}

/// A new file only this process can read, already unlinked (so it goes with its last handle,
/// crash or not, and nothing else can open it).
async fn temp_file(dir: Option<&PathBuf>) -> io::Result<tokio::fs::File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = dir.cloned().unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tries = 0;
    loop {
        let path = dir.join(format!(
            "lb-body-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await;
        match opened {
            Ok(file) => {
                tokio::fs::remove_file(&path).await?;
                return Ok(file);
            }
            // A name left by a process that died between create and unlink: the next one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// A buffered body sent from its start: the memory chunks, then the file in `READ_CHUNK`
/// pieces (positional reads on the blocking pool, so attempts never share a cursor).
struct Replay {
    buffered: Arc<Buffered>,
    remaining: u64,
    /// Next memory chunk.
    chunk: usize,
    /// Next file offset.
    offset: u64,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(chunk) = this.buffered.memory.get(this.chunk) {
            this.chunk += 1;
            this.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(file) = &this.buffered.file else {
            return Poll::Ready(None);
        };
        let left = this.buffered.file_len - this.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let reading = this.reading.get_or_insert_with(|| {
            let file = file.clone();
            let offset = this.offset;
            let len = left.min(READ_CHUNK) as usize;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Bytes::from(buf))
            })
        });
        let read = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        match read {
            Ok(Ok(data)) => {
                this.offset += data.len() as u64;
                this.remaining -= data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(Err(err)) => Poll::Ready(Some(Err(spill_error(err)))),
            Err(err) => {
                tracing::warn!(%err, "request buffering: read-back task failed");
                Poll::Ready(Some(Err(BodyError::Buffer)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(parts: &[Bytes]) -> UpstreamBody {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> =
            parts.iter().map(|p| Ok(Frame::data(p.clone()))).collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    fn config(memory: usize) -> RequestBuffering {
        RequestBuffering {
            memory,
            temp_dir: None,
        }
    }

    async fn replayed(buffered: &Arc<Buffered>) -> Bytes {
        let body = buffered.body();
        assert_eq!(body.size_hint().exact(), Some(buffered.len()));
        body.collect().await.expect("replay").to_bytes()
    }

    #[tokio::test]
    async fn a_small_body_stays_in_memory() {
        let buffered = Arc::new(
            read(
                chunks(&[Bytes::from_static(b"hello "), Bytes::from_static(b"world")]),
                &config(64),
            )
            .await
            .expect("read"),
        );
        assert!(!buffered.spilled());
        assert_eq!(buffered.len(), 11);
        assert_eq!(replayed(&buffered).await, "hello world");
    }

    #[tokio::test]
    async fn the_rest_of_a_larger_body_spills_to_a_file_and_replays_twice() {
        let big: Bytes = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let buffered = Arc::new(
            read(
                chunks(&[
                    big.slice(..10),
                    big.slice(10..200_000),
                    big.slice(200_000..),
                ]),
                &config(16),
            )
            .await
            .expect("read"),
        );
        assert!(buffered.spilled());
        assert_eq!(buffered.len(), big.len() as u64);
        assert_eq!(buffered.memory.iter().map(Bytes::len).sum::<usize>(), 16);
        assert_eq!(replayed(&buffered).await, big);
        assert_eq!(replayed(&buffered).await, big, "a retry sends it again");
    }

    #[tokio::test]
    async fn a_broken_body_is_its_error() {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"half"))),
            Err(BodyError::Client),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        assert_eq!(read(body, &config(1)).await.err(), Some(BodyError::Client));
    }

    #[tokio::test]
    async fn an_unusable_temp_dir_is_a_buffer_error() {
        let config = RequestBuffering {
            memory: 2,
            temp_dir: Some(PathBuf::from("/nonexistent/lb-buffer-test")),
        };
        assert_eq!(
            read(chunks(&[Bytes::from_static(b"abc")]), &config)
                .await
                .err(),
            Some(BodyError::Buffer)
        );
        // Under the threshold no file is needed.
        assert!(
            read(chunks(&[Bytes::from_static(b"ab")]), &config)
                .await
                .is_ok()
        );
    }
}
