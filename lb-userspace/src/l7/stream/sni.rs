//! TLS passthrough: the server name of a connection's ClientHello, read without terminating
//! TLS. The bytes are buffered (to be replayed to the backend) and parsed by rustls' own
//! `Acceptor`, which says when a whole ClientHello has arrived.
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::{io::AsyncReadExt, net::TcpStream};

/// Largest ClientHello buffered (a TLS record is at most 16 KiB plus its header; real
/// ClientHellos, post-quantum key shares included, are a few KiB).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

#[derive(Debug, thiserror::Error)]
pub enum ClientHelloError {
    #[error("no complete ClientHello before the deadline")]
    Timeout,
    #[error("connection closed before a complete ClientHello")]
    Closed,
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
}

/// A ClientHello as read: every byte read so far (to send upstream first) and its SNI.
pub struct ClientHello {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

/// Reads from `tcp` until a whole ClientHello is buffered, within `deadline`.
pub async fn read(
    tcp: &mut TcpStream,
    deadline: Duration,
) -> Result<ClientHello, ClientHelloError> {
    read_after(tcp, Vec::new(), deadline).await
}

/// As `read`, the connection's first bytes already in `initial` (read by someone else, e.g.
/// an HTTP server along with a CONNECT request's head).
pub async fn read_after(
    tcp: &mut TcpStream,
    initial: Vec<u8>,
    deadline: Duration,
) -> Result<ClientHello, ClientHelloError> {
    let read = async {
        let mut reader = ClientHelloReader::new(initial);
        let mut chunk = [0u8; 4096];
        if let Some(hello) = reader.push(&[])? {
            return Ok(hello);
        }
        loop {
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|_| ClientHelloError::Closed)?;
            if n == 0 {
                return Err(ClientHelloError::Closed);
            }
            if let Some(hello) = reader.push(&chunk[..n])? {
                return Ok(hello);
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ClientHelloError::Timeout)?
}

/// The bytes of a connection's start, as they arrive, until they hold a whole ClientHello (no
/// I/O here: `read_after` brings the bytes).
pub struct ClientHelloReader {
    acceptor: Acceptor,
    /// Every byte so far (replayed to the backend).
    bytes: Vec<u8>,
    /// How many of `bytes` the acceptor has.
    fed: usize,
}

impl ClientHelloReader {
    /// A reader whose first bytes are `initial` (may be empty; taken without a copy).
    pub fn new(initial: Vec<u8>) -> Self {
        Self {
            acceptor: Acceptor::default(),
            bytes: initial,
            fed: 0,
        }
    }

    /// Appends `fresh` (may be empty) to the bytes read; the ClientHello once it is whole.
    pub fn push(&mut self, fresh: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
        self.bytes.extend_from_slice(fresh);
        if self.bytes.len() > MAX_CLIENT_HELLO {
            return Err(ClientHelloError::TooLarge);
        }
        feed(&mut self.acceptor, &self.bytes[self.fed..])?;
        self.fed = self.bytes.len();
        if self.bytes.is_empty() {
            return Ok(None);
        }
        accepted(&mut self.acceptor, &self.bytes)
    }
}

/// Hands `fresh` bytes to `acceptor` (its buffer full: a ClientHello too large to take).
fn feed(acceptor: &mut Acceptor, mut fresh: &[u8]) -> Result<(), ClientHelloError> {
    while !fresh.is_empty() {
        match acceptor.read_tls(&mut fresh) {
            Ok(0) | Err(_) => return Err(ClientHelloError::TooLarge),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The ClientHello, once `acceptor` has all of it (`bytes`: everything read so far).
fn accepted(
    acceptor: &mut Acceptor,
    bytes: &[u8],
) -> Result<Option<ClientHello>, ClientHelloError> {
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let server_name = accepted
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            Ok(Some(ClientHello {
                bytes: bytes.to_vec(),
                server_name,
            }))
        }
        Ok(None) => Ok(None),
        Err((err, _alert)) => Err(ClientHelloError::NotTls(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello from `openssl s_client -servername Example.COM` (the fuzz seed, after
    /// its shape byte).
    const HELLO: &[u8] =
        include_bytes!("../../../../fuzz/corpus/client_hello/seed-tls13-sni-whole");

    #[test]
    fn a_hello_in_any_number_of_reads_names_its_server_in_lowercase() {
        let hello = &HELLO[1..];
        for initial in [0, 1, 5, 100, hello.len()] {
            let mut reader = ClientHelloReader::new(hello[..initial].to_vec());
            let mut outcome = reader.push(&[]).expect("a valid start");
            for byte in &hello[initial..] {
                assert!(outcome.is_none(), "complete before its last byte");
                outcome = reader.push(&[*byte]).expect("a valid hello");
            }
            let read = outcome.expect("complete");
            assert_eq!(read.server_name.as_deref(), Some("example.com"));
            assert_eq!(read.bytes, hello);
        }
    }

    #[test]
    fn not_tls_and_too_large_are_refused() {
        let mut reader = ClientHelloReader::new(Vec::new());
        assert!(matches!(
            reader.push(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ClientHelloError::NotTls(_))
        ));
        let mut reader = ClientHelloReader::new(vec![0x16, 3, 1, 0xff, 0xff]);
        assert!(matches!(
            reader.push(&[0; MAX_CLIENT_HELLO]),
            Err(ClientHelloError::TooLarge)
        ));
    }
}
