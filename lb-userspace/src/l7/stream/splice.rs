//! A bulk relay direction's bytes moved socket -> pipe -> socket with splice(2): the kernel
//! passes the pages along and they never enter lb's memory (the two copies of a read and a
//! write per byte are gone). Used by `relay.rs` once a direction shows it carries bulk data;
//! the readiness of both sockets stays with tokio (`try_io` clears it on EAGAIN).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{io::Interest, net::TcpStream};

/// The most one splice(2) asks for (no more than the pipe holds is moved).
const CHUNK: usize = 1 << 20;
/// The pipe's size: 64 KiB by default; larger moves more per system call.
const PIPE_SIZE: usize = 256 * 1024;
/// A pipe smaller than this is not used: past `/proc/sys/fs/pipe-user-pages-soft` the kernel
/// gives a user's new pipes two pages, and splicing 8 KiB at a time costs more than copying.
const MIN_PIPE_SIZE: usize = 64 * 1024;

/// Pipes open now, each two descriptors.
static OPEN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// At most a quarter of the descriptor limit goes to pipes: connections (two descriptors per
/// relay) must not be refused for descriptors that bulk relays hold, and a relay without a
/// pipe still works (it copies).
fn max_pipes() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) fills the struct it is given.
        let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
            _ => 1024,
        };
        soft / 4 / 2
    })
}

/// A non-blocking pipe carrying one direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pipe {
    /// A pipe, unless pipes already hold their share of descriptors or the kernel gives
    /// one too small to be worth it.
    pub fn new() -> io::Result<Self> {
        if OPEN_PIPES.fetch_add(1, Ordering::Relaxed) >= max_pipes() {
            OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("pipes hold their share of descriptors"));
        }
        Self::open().inspect_err(|_| {
            OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
        })
    }

    fn open() -> io::Result<Self> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl(2) on an open descriptor; a refusal (over the user's limits) leaves the
        // pipe as it was, which the size check below judges.
        let size = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        if usize::try_from(size).unwrap_or(0) < MIN_PIPE_SIZE {
            return Err(io::Error::other("pipe too small to splice through"));
        }
        Ok(Self { read, write })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors (a socket and a pipe); null offsets, as neither has one.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// Moves what `from` has received into the (empty) pipe, waiting until there is something;
/// 0 at EOF.
pub async fn fill(from: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
        }) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            moved => return moved,
        }
    }
}

/// Moves the `len` bytes in the pipe to `to`.
pub async fn drain(pipe: &Pipe, to: &TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), len)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(moved) => len = len.saturating_sub(moved),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    /// Bytes spliced from one connection to another arrive whole and in order, and the
    /// sender's EOF shows as a fill of 0.
    #[tokio::test]
    async fn spliced_bytes_arrive_whole_and_eof_is_zero() {
        let (mut sender, from) = pair().await;
        let (to, mut receiver) = pair().await;
        let pipe = Pipe::new().expect("pipe");
        let data: Vec<u8> = (0..(2 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let send = async {
            sender.write_all(&data).await.expect("send");
            sender.shutdown().await.expect("shutdown");
        };
        let relay = async {
            let mut moved = 0;
            loop {
                let n = fill(&from, &pipe).await.expect("fill");
                if n == 0 {
                    break;
                }
                drain(&pipe, &to, n).await.expect("drain");
                moved += n;
            }
            drop(to);
            moved
        };
        let mut got = Vec::new();
        let receive = receiver.read_to_end(&mut got);
        let ((), moved, received) = tokio::join!(send, relay, receive);
        received.expect("receive");
        assert_eq!(moved, data.len());
        assert!(got == data, "spliced bytes differ");
    }
}
