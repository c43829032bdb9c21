//! Bidirectional byte copy between a client and its upstream connection, with half-close
//! passed on (EOF on one side shuts down writing on the other; the other direction goes on)
//! and an idle timeout over both directions together.
//!
//! Per connection it costs what it must and no more (it runs once per tunnel or stream
//! connection): the sockets are split by reference (no shared halves to allocate), the
//! buffers are not zeroed (reads fill their spare capacity), and the direction that ends
//! last does not shut down its writer: both sockets are closed at once when the relay
//! returns, which sends the same FIN without the extra system call.
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

const BUFFER: usize = 16 * 1024;

/// Why a relay ended, with the bytes moved each way (client to upstream, upstream to client).
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Done(u64, u64),
    /// No byte either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, usually): both connections are dropped.
    Error(std::io::Error),
}

/// Copies both ways until both directions end, one fails, or nothing moves for `idle`; both
/// connections are closed when it returns.
pub async fn relay(mut client: TcpStream, mut upstream: TcpStream, idle: Duration) -> RelayEnd {
    let started = Instant::now();
    // Milliseconds since `started` of the last byte moved either way.
    let last = AtomicU64::new(0);
    // Set by the first direction to end.
    let one_done = AtomicBool::new(false);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let both = async {
        tokio::try_join!(
            copy_one(
                &mut client_read,
                &mut upstream_write,
                &last,
                &one_done,
                started
            ),
            copy_one(
                &mut upstream_read,
                &mut client_write,
                &last,
                &one_done,
                started
            ),
        )
    };
    let watchdog = async {
        loop {
            let deadline = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        result = both => match result {
            Ok((up, down)) => RelayEnd::Done(up, down),
            Err(err) => RelayEnd::Error(err),
        },
        () = watchdog => RelayEnd::Idle,
    }
}

/// One direction: copies until EOF, then shuts down the writer (a half-close the peer sees)
/// unless the other direction has already ended (the relay closes both sockets next).
async fn copy_one<R, W>(
    read: &mut R,
    write: &mut W,
    last: &AtomicU64,
    one_done: &AtomicBool,
    started: Instant,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(BUFFER);
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = read.read_buf(&mut buf).await?;
        if n == 0 {
            if !one_done.swap(true, Ordering::AcqRel) {
                write.shutdown().await?;
            }
            return Ok(total);
        }
        write.write_all(&buf).await?;
        total += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
