//! Bidirectional byte copy between a client and its upstream connection, with half-close
//! passed on (EOF on one side shuts down writing on the other; the other direction goes on)
//! and an idle timeout over both directions together.
use std::{
    sync::atomic::{AtomicU64, Ordering},
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

/// Copies both ways until both directions end, one fails, or nothing moves for `idle`.
pub async fn relay(client: TcpStream, upstream: TcpStream, idle: Duration) -> RelayEnd {
    let started = Instant::now();
    // Milliseconds since `started` of the last byte moved either way.
    let last = AtomicU64::new(0);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let both = async {
        tokio::try_join!(
            copy_one(&mut client_read, &mut upstream_write, &last, started),
            copy_one(&mut upstream_read, &mut client_write, &last, started),
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

/// One direction: copies until EOF, then shuts down the writer (a half-close the peer sees).
async fn copy_one<R, W>(
    read: &mut R,
    write: &mut W,
    last: &AtomicU64,
    started: Instant,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = read.read(&mut buf).await?;
        if n == 0 {
            write.shutdown().await?;
            return Ok(total);
        }
        write.write_all(&buf[..n]).await?;
        total += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
