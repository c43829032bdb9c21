//! Bidirectional byte copy between a client and its upstream connection, with half-close
//! passed on (EOF on one side shuts down writing on the other; the other direction goes on),
//! a reset passed on as a reset (HAProxy's and Envoy's behaviour: a peer that sent RST gets no
//! FIN exchange on the other side, and lb keeps no TIME_WAIT for it) and an idle timeout over
//! both directions together. Small messages are copied through a buffer; a direction that
//! turns out to carry bulk data is spliced from then on (`splice.rs`).
use std::{
    io,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    time::Instant,
};

use super::splice;

/// Each direction's copy buffer: the many connections that only ever carry small messages
/// never need more. A read that fills it means bulk data (see `copy_one`).
const BUFFER: usize = 16 * 1024;
/// The copy buffer of a bulk direction that could not have a pipe: chunks 8x larger cost a
/// fifth less CPU per byte on loopback.
const BULK_BUFFER: usize = 128 * 1024;

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

/// Moves bytes both ways until both directions end, one fails, or nothing moves for `idle`; both
/// connections are closed when it returns (which ends the second direction to finish: see
/// `copy_one`). On a failure both are closed with RST.
pub async fn relay(mut client: TcpStream, mut upstream: TcpStream, idle: Duration) -> RelayEnd {
    let end = copy_both(&mut client, &mut upstream, idle).await;
    if matches!(end, RelayEnd::Error(_)) {
        // SO_LINGER 0: close() sends RST instead of FIN.
        for stream in [&client, &upstream] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
    end
}

/// What the two directions share.
struct Progress {
    started: Instant,
    /// Milliseconds since `started` of the last byte moved either way.
    last: AtomicU64,
    /// Set by the first direction to reach EOF.
    one_done: AtomicBool,
}

impl Progress {
    /// Bytes moved just now.
    fn moved(&self) {
        let at = self.started.elapsed().as_millis() as u64;
        self.last.store(at, Ordering::Relaxed);
    }
}

async fn copy_both(client: &mut TcpStream, upstream: &mut TcpStream, idle: Duration) -> RelayEnd {
    let progress = Progress {
        started: Instant::now(),
        last: AtomicU64::new(0),
        one_done: AtomicBool::new(false),
    };
    // Borrowed halves: no shared allocation, and no second shutdown(2) when they drop.
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let both = async {
        tokio::try_join!(
            copy_one(&mut client_read, &mut upstream_write, &progress),
            copy_one(&mut upstream_read, &mut client_write, &progress),
        )
    };
    let watchdog = async {
        loop {
            let last = Duration::from_millis(progress.last.load(Ordering::Relaxed));
            let deadline = progress.started + last + idle;
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

/// One direction: copies until EOF, then shuts down the writer (see `finish`). Small
/// messages are copied through a buffer; once a read fills it, the direction carries bulk
/// data and the rest is spliced (`splice.rs`), or copied with a larger buffer if no pipe can
/// be had.
async fn copy_one(
    read: &mut ReadHalf<'_>,
    write: &mut WriteHalf<'_>,
    progress: &Progress,
) -> io::Result<u64> {
    let mut total = 0u64;
    // Filled by `read_buf`, so never zeroed.
    let mut buf = Vec::with_capacity(BUFFER);
    let pipe = loop {
        buf.clear();
        let n = read.read_buf(&mut buf).await?;
        if n == 0 {
            return finish(write, progress, total).await;
        }
        write.write_all(&buf[..n]).await?;
        total += n as u64;
        progress.moved();
        if n == buf.capacity() {
            match splice::Pipe::new() {
                Ok(pipe) => break pipe,
                Err(_) if n < BULK_BUFFER => buf = Vec::with_capacity(BULK_BUFFER),
                Err(_) => {}
            }
        }
    };
    drop(buf);
    loop {
        let n = splice::fill(read.as_ref(), &pipe).await?;
        if n == 0 {
            return finish(write, progress, total).await;
        }
        splice::drain(&pipe, write.as_ref(), n).await?;
        total += n as u64;
        progress.moved();
    }
}

/// A direction's EOF: the writer is shut down (a half-close the peer sees) unless the other
/// direction has already ended: then the relay is over and closing the socket sends the same
/// FIN, one system call fewer per connection.
async fn finish(write: &mut WriteHalf<'_>, progress: &Progress, total: u64) -> io::Result<u64> {
    if !progress.one_done.swap(true, Ordering::Relaxed) {
        write.shutdown().await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Sends `data` and then EOF while reading everything the other side sends.
    async fn exchange(stream: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
        let (mut read, mut write) = stream.split();
        let mut got = Vec::new();
        let (sent, received) = tokio::join!(
            async {
                write.write_all(data).await?;
                write.shutdown().await
            },
            read.read_to_end(&mut got)
        );
        sent.and(received).map(|_| got)
    }

    /// Megabytes each way at once: both directions turn to splicing mid-transfer and every
    /// byte still arrives, in order, with EOF passed on and the totals right.
    #[tokio::test]
    async fn bulk_transfers_arrive_whole_both_ways() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut backend) = pair().await;
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(30)));
        let up = pattern(3 << 20, 7);
        let down = pattern(5 << 20, 11);
        let (client_got, backend_got) =
            tokio::join!(exchange(&mut client, &up), exchange(&mut backend, &down));
        assert!(
            client_got.expect("client side") == down,
            "downstream bytes differ"
        );
        assert!(
            backend_got.expect("backend side") == up,
            "upstream bytes differ"
        );
        match relay.await.expect("relay task") {
            RelayEnd::Done(u, d) => assert_eq!((u, d), (up.len() as u64, down.len() as u64)),
            other => panic!("relay ended with {other:?}"),
        }
    }
}
