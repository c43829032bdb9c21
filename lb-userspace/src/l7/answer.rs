//! lb's own short answers (errors, refusals by policies): a status, a fixed text body and its
//! Content-Type, so clients and logs can tell lb's words from a backend's.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use super::pool::ProxyBody;

pub const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// `status` with `text` as its body, `Content-Type: text/plain` (callers add their headers).
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    text_answer(status, Bytes::from_static(text.as_bytes()))
}

/// `status` with `text` (made at run time) as its plain-text body.
pub fn text_answer(status: StatusCode, text: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(text).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_PLAIN);
    // lb's own words: custom error pages may replace them (`policy/error_pages.rs`).
    response
        .extensions_mut()
        .insert(super::policy::error_pages::LbAnswer);
    response
}

/// The header saying lb itself shed a request (as Envoy's `x-envoy-overloaded`), naming the
/// guard: `breaker`, `adaptive` or `memory`.
pub const OVERLOADED: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-lb-overloaded");

/// lb's 503 for a request an overload guard refused: at once, `Retry-After: 1` and
/// `x-lb-overloaded`. (429 stays for limits the caller is responsible for: rate limits.)
pub fn overloaded(shed: super::upstream::Shed) -> Response<ProxyBody> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "overloaded\n");
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    headers.insert(
        OVERLOADED,
        hyper::header::HeaderValue::from_static(shed.guard()),
    );
    response
}
