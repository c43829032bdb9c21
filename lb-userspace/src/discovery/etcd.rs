//! Backends from the keys under a prefix in etcd, read and then watched through etcd's v3
//! HTTP API (the JSON gateway every etcd serves next to gRPC: `POST /v3/kv/range`,
//! `POST /v3/watch`). Each key's value is one backend: `ADDRESS:PORT`, or a JSON object
//! `{"address": "ADDRESS:PORT", "weight": 2, "backup": false}`.
//!
//! Why not the etcd-client crate: it generates its gRPC code with protoc at build time (one
//! more system tool for every build of lb) and brings tonic, for two calls whose HTTP form
//! etcd documents and keeps.
//!
//! The loop: read the whole prefix (the set and the revision it is at), report it, watch
//! from the next revision, and read again on the first change (or after `refresh`, so a
//! watch lost without an error cannot freeze the set). Endpoints are tried in turn.
use std::{net::SocketAddr, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Uri};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;

use super::{RETRY_AFTER_FAILURE, Reporter};
use crate::l7::selection::Backend;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A range request (and the start of a watch) gets this long to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until the manager is gone.
pub async fn watch(endpoints: &[Uri], prefix: &str, refresh: Duration, mut reporter: Reporter) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let range_end = prefix_end(prefix.as_bytes());
    let mut turn = 0usize;
    loop {
        let Some(endpoint) = endpoints.get(turn % endpoints.len().max(1)) else {
            return;
        };
        let failure = match range(&client, endpoint, prefix.as_bytes(), &range_end).await {
            Ok((backends, revision)) => {
                let result = match backends.is_empty() {
                    true => Err(format!("etcd {prefix}: no keys")),
                    false => Ok(backends),
                };
                if !reporter.report(result) {
                    return;
                }
                let watched = changed(
                    &client,
                    endpoint,
                    prefix.as_bytes(),
                    &range_end,
                    revision + 1,
                );
                match tokio::time::timeout(refresh, watched).await {
                    Ok(Ok(())) | Err(_) => continue,
                    Ok(Err(err)) => err,
                }
            }
            Err(err) => err,
        };
        if !reporter.report(Err(format!("etcd {endpoint}: {failure}"))) {
            return;
        }
        turn += 1;
        tokio::time::sleep(RETRY_AFTER_FAILURE.min(refresh)).await;
    }
}

/// The first key after every key starting with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: "to the end of the keyspace".
    vec![0]
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

/// int64 fields come as JSON strings from the gateway.
#[derive(Deserialize)]
struct Header {
    revision: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

/// The backends under the prefix now (sorted) and the revision they are at.
async fn range(
    client: &HttpClient,
    endpoint: &Uri,
    key: &[u8],
    range_end: &[u8],
) -> Result<(Vec<Backend>, i64), String> {
    let body = serde_json::json!({
        "key": BASE64.encode(key),
        "range_end": BASE64.encode(range_end),
    });
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let response = client
            .request(post(endpoint, "/v3/kv/range", &body)?)
            .await
            .map_err(|e| format!("range: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("range: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "range: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(bytes)
    })
    .await
    .map_err(|_| "range: no answer in 5s".to_owned())??;
    let parsed: RangeResponse =
        serde_json::from_slice(&answer).map_err(|e| format!("range: bad answer: {e}"))?;
    let revision = parsed
        .header
        .revision
        .parse()
        .map_err(|_| format!("range: bad revision {:?}", parsed.header.revision))?;
    let mut backends = parsed
        .kvs
        .iter()
        .map(backend_of)
        .collect::<Result<Vec<_>, _>>()?;
    backends.sort_by_key(|b| (b.backup, b.addr));
    backends.dedup_by_key(|b| b.addr);
    Ok((backends, revision))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendValue {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    backup: bool,
}

fn one() -> u32 {
    1
}

/// One key's backend; a value that is neither form fails the whole read (the last good set
/// stays), naming the key.
fn backend_of(kv: &KeyValue) -> Result<Backend, String> {
    let decode = |field: &str| {
        BASE64
            .decode(field)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let key = decode(&kv.key).unwrap_or_else(|_| kv.key.clone());
    let value = decode(&kv.value).map_err(|_| format!("key {key:?}: value is not base64"))?;
    let bad = || {
        format!(
            "key {key:?}: value {value:?} is not ADDRESS:PORT or {{\"address\": \"ADDRESS:PORT\", \"weight\": N, \"backup\": BOOL}}"
        )
    };
    let trimmed = value.trim();
    let parsed = match trimmed.starts_with('{') {
        true => serde_json::from_str::<BackendValue>(trimmed).map_err(|_| bad())?,
        false => BackendValue {
            address: trimmed.to_owned(),
            weight: 1,
            backup: false,
        },
    };
    let addr: SocketAddr = parsed.address.parse().map_err(|_| bad())?;
    if parsed.weight == 0 {
        return Err(format!("key {key:?}: weight must be at least 1"));
    }
    Ok(Backend {
        addr,
        weight: parsed.weight,
        backup: parsed.backup,
    })
}

/// Resolves once something under the prefix changes after `start_revision`; an error when
/// the watch cannot be made or breaks.
async fn changed(
    client: &HttpClient,
    endpoint: &Uri,
    key: &[u8],
    range_end: &[u8],
    start_revision: i64,
) -> Result<(), String> {
    let body = serde_json::json!({
        "create_request": {
            "key": BASE64.encode(key),
            "range_end": BASE64.encode(range_end),
            "start_revision": start_revision.to_string(),
        }
    });
    let response = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.request(post(endpoint, "/v3/watch", &body)?),
    )
    .await
    .map_err(|_| "watch: no answer in 5s".to_owned())?
    .map_err(|e| format!("watch: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("watch: {}", response.status()));
    }
    // A stream of JSON objects, one per line: the creation, then batches of events.
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("watch: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if watch_line_has_events(&line)? {
                return Ok(());
            }
        }
    }
    Err("watch: the stream ended".to_owned())
}

/// Whether one line of the watch stream carries events (an error line is an error).
fn watch_line_has_events(line: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return Ok(false);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("watch: bad line: {e}"))?;
    if let Some(error) = value.get("error") {
        return Err(format!("watch: {error}"));
    }
    let result = &value["result"];
    if result["canceled"].as_bool() == Some(true) {
        return Err(format!(
            "watch canceled: {}",
            result["cancel_reason"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    }
    Ok(result["events"].as_array().is_some_and(|e| !e.is_empty()))
}

fn post(
    endpoint: &Uri,
    path: &str,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>, String> {
    let authority = endpoint
        .authority()
        .ok_or_else(|| format!("endpoint {endpoint} has no host"))?;
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("{endpoint}{path}: {e}"))?;
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("{endpoint}{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"/lb/web/"), b"/lb/web0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: BASE64.encode(key),
            value: BASE64.encode(value),
        }
    }

    #[test]
    fn values_are_an_address_or_an_object() {
        let b = backend_of(&kv("/p/a", "10.0.0.1:80")).expect("plain");
        assert_eq!(
            (b.addr.to_string(), b.weight, b.backup),
            ("10.0.0.1:80".into(), 1, false)
        );
        let b = backend_of(&kv(
            "/p/b",
            r#"{"address": "[::1]:8080", "weight": 3, "backup": true}"#,
        ))
        .expect("object");
        assert_eq!(
            (b.addr.to_string(), b.weight, b.backup),
            ("[::1]:8080".into(), 3, true)
        );
        for bad in [
            "web:80",
            "{\"address\": \"10.0.0.1:80\", \"wieght\": 2}",
            "",
        ] {
            let e = backend_of(&kv("/p/c", bad)).expect_err(bad);
            assert!(e.starts_with("key \"/p/c\": value"), "{e}");
        }
        let e = backend_of(&kv("/p/d", r#"{"address": "10.0.0.1:80", "weight": 0}"#))
            .expect_err("weight 0");
        assert_eq!(e, "key \"/p/d\": weight must be at least 1");
    }

    #[test]
    fn watch_lines() {
        assert_eq!(
            watch_line_has_events(b"{\"result\":{\"created\":true}}\n"),
            Ok(false)
        );
        assert_eq!(
            watch_line_has_events(b"{\"result\":{\"events\":[{\"kv\":{}}]}}\n"),
            Ok(true)
        );
        assert!(watch_line_has_events(b"{\"error\":{\"message\":\"x\"}}").is_err());
        assert!(
            watch_line_has_events(
                b"{\"result\":{\"canceled\":true,\"cancel_reason\":\"compacted\"}}"
            )
            .is_err()
        );
        assert!(watch_line_has_events(b"not json").is_err());
    }
}
