//! What the load generator sends, and where.
use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
};

use bytes::Bytes;
use hyper::{Method, Uri, header::HeaderName, http::HeaderValue};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpVersion {
    #[value(name = "1.1")]
    Http1,
    #[value(name = "2")]
    Http2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyHeaderVersion {
    V1,
    V2,
}

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no URL given")]
    NoUrl,
    #[error("{0:?} is not a URL: {1}")]
    BadUrl(String, hyper::http::uri::InvalidUri),
    #[error(
        "{0:?}: give a scheme: http://HOST:PORT/PATH or https://... (tcp://HOST:PORT or \
         udp://HOST:PORT for connection or datagram rates)"
    )]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("all URLs must share scheme, host and port ({0:?} differs from {1:?})")]
    MixedAuthorities(String, String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("header {0:?} is not NAME: VALUE")]
    BadHeader(String),
    #[error("bad method {0:?}")]
    BadMethod(String),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0:?}: a forward proxy is http://HOST:PORT")]
    ProxyScheme(String),
}

/// A resolved target: requests rotate over `paths`.
#[derive(Clone, Debug)]
pub struct Target {
    pub tls: bool,
    /// Host name for SNI and the Host header.
    pub host: String,
    pub authority: String,
    pub addr: SocketAddr,
    pub paths: Vec<String>,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Reach the target through this forward proxy, one CONNECT tunnel per connection
    /// (`lb bench -x`, as curl's `--proxytunnel`).
    pub tunnel: Option<Tunnel>,
}

/// A forward proxy to tunnel through.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub addr: SocketAddr,
    /// `Proxy-Authorization` sent with each CONNECT (Basic, from `--proxy-user`).
    pub authorization: Option<HeaderValue>,
}

impl Tunnel {
    /// The proxy of `url` (`http://HOST:PORT`), with Basic credentials `user` (`NAME:PASSWORD`).
    pub fn parse(url: &str, user: Option<&str>) -> Result<Self, TargetError> {
        use base64::Engine as _;
        let uri: Uri = url
            .parse()
            .map_err(|e| TargetError::BadUrl(url.to_owned(), e))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(TargetError::ProxyScheme(url.to_owned()));
        }
        let host = uri
            .host()
            .ok_or_else(|| TargetError::NoHost(url.to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(3128);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| TargetError::Resolve(url.to_owned(), e))?
            .next()
            .ok_or_else(|| {
                TargetError::Resolve(url.to_owned(), std::io::ErrorKind::NotFound.into())
            })?;
        let authorization = user
            .map(|user| {
                let token = base64::engine::general_purpose::STANDARD.encode(user);
                HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| TargetError::BadHeader("--proxy-user".into()))
            })
            .transpose()?;
        Ok(Self {
            addr,
            authorization,
        })
    }
}

impl Target {
    pub fn parse(
        urls: &[String],
        method: &str,
        headers: &[String],
        body: Bytes,
    ) -> Result<Self, TargetError> {
        let first = urls.first().ok_or(TargetError::NoUrl)?;
        let mut paths = Vec::with_capacity(urls.len());
        // (tls, host, port, authority as written) of the first URL; the others must match.
        let mut base: Option<(bool, String, u16, String)> = None;
        for url in urls {
            let uri: Uri = url
                .parse()
                .map_err(|e| TargetError::BadUrl(url.clone(), e))?;
            let tls = match uri.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => return Err(TargetError::Scheme(url.clone())),
            };
            let host = uri
                .host()
                .ok_or_else(|| TargetError::NoHost(url.clone()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|| host.clone());
            match &base {
                None => base = Some((tls, host, port, authority)),
                Some((t, h, p, _)) if (*t, h.as_str(), *p) != (tls, host.as_str(), port) => {
                    return Err(TargetError::MixedAuthorities(url.clone(), first.clone()));
                }
                Some(_) => {}
            }
            paths.push(
                uri.path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned()),
            );
        }
        let (tls, host, port, authority) = base.ok_or(TargetError::NoUrl)?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| TargetError::Resolve(authority.clone(), e))?
            .next()
            .ok_or_else(|| {
                TargetError::Resolve(authority.clone(), std::io::ErrorKind::NotFound.into())
            })?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| TargetError::BadMethod(method.into()))?;
        let headers = headers
            .iter()
            .map(|h| {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| TargetError::BadHeader(h.clone()))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| TargetError::BadHeader(h.clone()))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|_| TargetError::BadHeader(h.clone()))?;
                Ok((name, value))
            })
            .collect::<Result<_, TargetError>>()?;
        Ok(Self {
            tls,
            host,
            authority,
            addr,
            paths,
            method,
            headers,
            body,
            tunnel: None,
        })
    }
}
