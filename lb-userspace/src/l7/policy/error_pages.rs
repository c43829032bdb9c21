//! Custom error pages (NGINX `error_page`, HAProxy `errorfile`): `error_pages = { 502 =
//! "errors/502.html", ... }` on a listener or a route gives lb's own answers of those statuses
//! (a backend that cannot be reached, a timeout, a refusal by a policy or a guard) that body
//! instead of lb's one-line text. A route's page for a status wins over its listener's. Only
//! lb's answers are replaced, told apart by the `LbAnswer` mark `answer.rs` puts on them: a
//! backend's own 502 passes as the backend sent it. The files are read when the configuration
//! is loaded (a reload reads them again); their headers (Retry-After, x-lb-overloaded, CORS)
//! are kept, the Content-Type follows the file's extension.
use std::{collections::BTreeMap, ops::Range, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response,
    header::{self, HeaderValue},
};
use toml::Spanned;

use crate::{config::ConfigError, l7::pool::ProxyBody};

/// As written: status (a TOML key) -> file.
pub type RawErrorPages = BTreeMap<String, Spanned<PathBuf>>;

/// Marks a response lb made itself (`answer::text_answer`), which error pages may replace.
#[derive(Clone, Copy, Debug)]
pub struct LbAnswer;

/// One page: its file (compared on reload) and what was read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPage {
    pub path: PathBuf,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

/// A listener's or a route's pages by status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorPages(BTreeMap<u16, ErrorPage>);

impl ErrorPages {
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        self.0.get(&status)
    }
}

/// Reads the pages `raw` names; a status that is not 400-599 or a file that cannot be read is
/// an error at its line.
pub fn compile(
    raw: &Spanned<RawErrorPages>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Arc<ErrorPages>, ConfigError> {
    let mut pages = BTreeMap::new();
    for (status, file) in raw.get_ref() {
        let code = status
            .parse::<u16>()
            .ok()
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| {
                err(
                    raw.span(),
                    format!("error_pages: {status:?} is not an error status (400 to 599)"),
                )
            })?;
        let path = file.get_ref();
        let body = std::fs::read(path).map_err(|e| {
            err(
                file.span(),
                format!("error_pages: cannot read {}: {e}", path.display()),
            )
        })?;
        pages.insert(
            code,
            ErrorPage {
                path: path.clone(),
                content_type: content_type(path),
                body: Bytes::from(body),
            },
        );
    }
    Ok(Arc::new(ErrorPages(pages)))
}

/// The Content-Type of a page by its file's extension.
fn content_type(path: &std::path::Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    HeaderValue::from_static(match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        _ => "text/plain; charset=utf-8",
    })
}

/// Gives `response` the page for its status from the first of `pages` that has one, when lb
/// made it.
pub fn apply(pages: [Option<&ErrorPages>; 2], response: &mut Response<ProxyBody>) {
    if response.extensions().get::<LbAnswer>().is_none() {
        return;
    }
    let status = response.status().as_u16();
    let Some(page) = pages.into_iter().flatten().find_map(|p| p.get(status)) else {
        return;
    };
    *response.body_mut() = Full::new(page.body.clone())
        .map_err(|never| match never {})
        .boxed();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, page.content_type.clone());
    headers.remove(header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;
    use crate::l7::answer;

    fn pages(status: u16, body: &'static str) -> ErrorPages {
        ErrorPages(BTreeMap::from([(
            status,
            ErrorPage {
                path: "p.html".into(),
                content_type: content_type(std::path::Path::new("p.html")),
                body: Bytes::from_static(body.as_bytes()),
            },
        )]))
    }

    async fn body(response: Response<ProxyBody>) -> (String, String) {
        let kind = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (kind, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn only_lb_answers_get_pages_and_the_route_wins() {
        let (route, listener) = (pages(502, "route"), pages(502, "listener"));
        let mut ours = answer::plain(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
        apply([Some(&route), Some(&listener)], &mut ours);
        assert_eq!(
            body(ours).await,
            ("text/html; charset=utf-8".into(), "route".into())
        );
        let mut ours = answer::plain(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
        apply([None, Some(&listener)], &mut ours);
        assert_eq!(body(ours).await.1, "listener");
        // Another status, and a backend's own 502: untouched.
        let mut other = answer::plain(StatusCode::GATEWAY_TIMEOUT, "timeout\n");
        apply([Some(&route), None], &mut other);
        assert_eq!(body(other).await.1, "timeout\n");
        let mut theirs = Response::new(
            Full::new(Bytes::from_static(b"backend"))
                .map_err(|never| match never {})
                .boxed(),
        );
        *theirs.status_mut() = StatusCode::BAD_GATEWAY;
        theirs
            .headers_mut()
            .insert(header::CONTENT_TYPE, answer::TEXT_PLAIN);
        apply([Some(&route), None], &mut theirs);
        assert_eq!(body(theirs).await.1, "backend");
    }
}
