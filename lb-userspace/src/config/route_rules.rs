//! The richer `[[route]]` keys, checked and compiled once at load: exact (`path`) and regex
//! (`path_regex`) paths, `methods`, `[[route.header]]` matches, path rewrites
//! (`rewrite_prefix`, `rewrite_regex`) and weighted `split`s between pools. `routing.rs` uses
//! the compiled forms on every request.
use std::{collections::HashSet, ops::Range, path::Path};

use hyper::{
    HeaderMap, Method,
    header::{HeaderName, HeaderValue},
};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, route::RawRoute};

/// One `[[route.header]]` condition; a route's conditions must all hold.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub rule: HeaderRule,
}

#[derive(Clone, Debug)]
pub enum HeaderRule {
    /// `value = "..."`: some value of the header is exactly this.
    Value(HeaderValue),
    /// `present = true|false`: the header is there (or, false, absent).
    Present(bool),
    /// `regex = "..."`: some value of the header contains a match (anchor with `^...$`).
    Regex(Regex),
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.rule {
            HeaderRule::Present(wanted) => values.next().is_some() == *wanted,
            HeaderRule::Value(wanted) => values.any(|v| v == wanted),
            HeaderRule::Regex(re) => values.any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
        }
    }
}

/// How the path is changed before it goes upstream.
#[derive(Clone, Debug)]
pub enum Rewrite {
    /// The matched prefix (or exact path) is replaced by this; `strip_prefix` is `Prefix("/")`.
    Prefix(String),
    /// The route's `path_regex` match is replaced by this template (`$1`, `${name}`).
    Regex(String),
}

/// One pool of a weighted split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitTarget {
    pub pool: String,
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    name: Spanned<String>,
    value: Option<Spanned<String>>,
    present: Option<bool>,
    regex: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplitTarget {
    pool: Spanned<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// What a `[[route]]` adds to listener and host: checked and compiled.
pub(crate) struct RouteRules {
    /// The single pool, or the first pool of the split.
    pub pool: String,
    pub path_exact: Option<String>,
    pub path_regex: Option<Regex>,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatch>,
    pub rewrite: Option<Rewrite>,
    pub split: Vec<SplitTarget>,
}

/// Checks and compiles the match, rewrite and pool keys of one route (`route` is the span of
/// the whole `[[route]]` table; `pools` the names of the configured pools).
pub(crate) fn parse(
    r: &RawRoute,
    route: Range<usize>,
    pools: &HashSet<String>,
    answers_itself: bool,
    text: &str,
    path: &Path,
) -> Result<RouteRules, ConfigError> {
    let err = |span: Range<usize>, message: String| ConfigError::at(path, text, span, message);

    let given: Vec<(&str, Range<usize>)> = [
        ("path", r.path.as_ref().map(Spanned::span)),
        ("path_prefix", r.path_prefix.as_ref().map(Spanned::span)),
        ("path_regex", r.path_regex.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(key, span)| span.map(|s| (key, s)))
    .collect();
    if let [(first, _), (second, span), ..] = given.as_slice() {
        return Err(err(
            span.clone(),
            format!(
                "route has both {first} and {second}: use one of path, path_prefix, path_regex"
            ),
        ));
    }
    let path_exact = match &r.path {
        Some(p) if !p.get_ref().starts_with('/') => {
            return Err(err(
                p.span(),
                format!("path {:?} must start with /", p.get_ref()),
            ));
        }
        Some(p) => Some(p.get_ref().clone()),
        None => None,
    };
    let path_regex = r
        .path_regex
        .as_ref()
        .map(|re| compile(re, "path_regex", &err))
        .transpose()?;

    let methods = match &r.methods {
        None => Vec::new(),
        Some(list) if list.get_ref().is_empty() => {
            return Err(err(list.span(), "methods is empty".to_owned()));
        }
        Some(list) => list
            .get_ref()
            .iter()
            .map(|m| parse_method(m).map_err(|reason| err(m.span(), reason)))
            .collect::<Result<_, _>>()?,
    };

    let headers = r
        .headers
        .iter()
        .map(|h| parse_header_match(h.get_ref(), &err))
        .collect::<Result<_, _>>()?;

    let rewrite = parse_rewrite(r, path_regex.as_ref(), &err)?;

    let (pool, split) = match (&r.pool, &r.split) {
        (Some(p), Some(_)) => {
            return Err(err(
                p.span(),
                "route has both pool and split: use one".to_owned(),
            ));
        }
        // A route that answers itself (respond, redirect) has no pool.
        (None, None) if answers_itself => (String::new(), Vec::new()),
        (None, None) => return Err(err(route, "route needs pool or split".to_owned())),
        (Some(p), None) => {
            if !pools.contains(p.get_ref()) {
                return Err(err(
                    p.span(),
                    format!("route names unknown pool {:?}", p.get_ref()),
                ));
            }
            (p.get_ref().clone(), Vec::new())
        }
        (None, Some(split)) => {
            let targets = parse_split(split, pools, &err)?;
            (targets[0].pool.clone(), targets)
        }
    };

    Ok(RouteRules {
        pool,
        path_exact,
        path_regex,
        methods,
        headers,
        rewrite,
        split,
    })
}

type ErrAt<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

fn compile(re: &Spanned<String>, key: &str, err: &ErrAt) -> Result<Regex, ConfigError> {
    Regex::new(re.get_ref()).map_err(|e| {
        err(
            re.span(),
            format!("{key} {:?}: {}", re.get_ref(), regex_reason(&e)),
        )
    })
}

/// The one-line reason of a regex error (its Display spans several lines with a caret).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

fn parse_method(m: &Spanned<String>) -> Result<Method, String> {
    let name = m.get_ref();
    if name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method {name:?} must be upper case (methods are case-sensitive)"
        ));
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not an HTTP method"))
}

fn parse_header_match(h: &RawHeaderMatch, err: &ErrAt) -> Result<HeaderMatch, ConfigError> {
    let raw_name = h.name.get_ref();
    let name = HeaderName::from_bytes(raw_name.as_bytes())
        .map_err(|_| err(h.name.span(), format!("bad header name {raw_name:?}")))?;
    let rule = match (&h.value, h.present, &h.regex) {
        (Some(v), None, None) => HeaderRule::Value(
            HeaderValue::from_str(v.get_ref())
                .map_err(|_| err(v.span(), format!("bad header value {:?}", v.get_ref())))?,
        ),
        (None, Some(present), None) => HeaderRule::Present(present),
        (None, None, Some(re)) => HeaderRule::Regex(compile(re, "header regex", err)?),
        (None, None, None) => {
            return Err(err(
                h.name.span(),
                format!("header {raw_name:?} needs one of value, present, regex"),
            ));
        }
        _ => {
            return Err(err(
                h.name.span(),
                format!("header {raw_name:?}: use only one of value, present, regex"),
            ));
        }
    };
    Ok(HeaderMatch { name, rule })
}

fn parse_rewrite(
    r: &RawRoute,
    path_regex: Option<&Regex>,
    err: &ErrAt,
) -> Result<Option<Rewrite>, ConfigError> {
    if let Some(to) = &r.rewrite_prefix {
        if !to.get_ref().starts_with('/') {
            return Err(err(
                to.span(),
                format!("rewrite_prefix {:?} must start with /", to.get_ref()),
            ));
        }
        if path_regex.is_some() {
            return Err(err(
                to.span(),
                "rewrite_prefix needs path_prefix or path (use rewrite_regex with path_regex)"
                    .to_owned(),
            ));
        }
        if r.strip_prefix {
            return Err(err(
                to.span(),
                "strip_prefix and rewrite_prefix together (strip_prefix is rewrite_prefix = \"/\")"
                    .to_owned(),
            ));
        }
        return Ok(Some(Rewrite::Prefix(to.get_ref().clone())));
    }
    if let Some(template) = &r.rewrite_regex {
        let Some(re) = path_regex else {
            return Err(err(
                template.span(),
                "rewrite_regex needs path_regex".to_owned(),
            ));
        };
        check_template(template.get_ref(), re).map_err(|reason| {
            err(
                template.span(),
                format!("rewrite_regex {:?}: {reason}", template.get_ref()),
            )
        })?;
        return Ok(Some(Rewrite::Regex(template.get_ref().clone())));
    }
    if r.strip_prefix {
        if path_regex.is_some() {
            return Err(err(
                r.path_regex.as_ref().map_or(0..0, Spanned::span),
                "strip_prefix needs path_prefix or path (use rewrite_regex with path_regex)"
                    .to_owned(),
            ));
        }
        return Ok(Some(Rewrite::Prefix("/".to_owned())));
    }
    Ok(None)
}

/// Every `$N`, `$name` and `${name}` in a replacement template must name a group of `re`
/// (the regex crate silently substitutes "" for unknown groups, and reads `$1a` as a group
/// named `1a`).
fn check_template(template: &str, re: &Regex) -> Result<(), String> {
    let names: HashSet<&str> = re.capture_names().flatten().collect();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let group = if let Some(braced) = rest.strip_prefix('{') {
            let Some(end) = braced.find('}') else {
                return Err("unclosed ${".to_owned());
            };
            rest = &braced[end + 1..];
            &braced[..end]
        } else if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let group = &rest[..end];
            rest = &rest[end..];
            group
        };
        if group.is_empty() {
            continue;
        }
        let known = match group.parse::<usize>() {
            Ok(i) => i < re.captures_len(),
            Err(_) => names.contains(group),
        };
        if !known {
            return Err(format!("path_regex has no group {group:?}"));
        }
    }
    Ok(())
}

fn parse_split(
    split: &Spanned<Vec<Spanned<RawSplitTarget>>>,
    pools: &HashSet<String>,
    err: &ErrAt,
) -> Result<Vec<SplitTarget>, ConfigError> {
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for t in split.get_ref() {
        let t = t.get_ref();
        let pool = t.pool.get_ref();
        if !pools.contains(pool) {
            return Err(err(
                t.pool.span(),
                format!("split names unknown pool {pool:?}"),
            ));
        }
        if !seen.insert(pool.as_str()) {
            return Err(err(
                t.pool.span(),
                format!("split names pool {pool:?} twice"),
            ));
        }
        targets.push(SplitTarget {
            pool: pool.clone(),
            weight: t.weight,
        });
    }
    if targets.iter().map(|t| u64::from(t.weight)).sum::<u64>() == 0 {
        return Err(err(split.span(), "split weights add up to 0".to_owned()));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_must_name_existing_groups() {
        let re = Regex::new("^/v(?<version>[0-9]+)/(.*)$").expect("regex");
        assert_eq!(check_template("/new/$2/${version}/$$1", &re), Ok(()));
        assert_eq!(check_template("/$0", &re), Ok(()));
        assert_eq!(
            check_template("/new/$3", &re),
            Err("path_regex has no group \"3\"".to_owned())
        );
        assert_eq!(
            check_template("/new/$1a", &re),
            Err("path_regex has no group \"1a\"".to_owned())
        );
        assert_eq!(
            check_template("/new/${1", &re),
            Err("unclosed ${".to_owned())
        );
        assert_eq!(check_template("/cost/$", &re), Ok(()));
    }

    #[test]
    fn header_rules() {
        let mut h = HeaderMap::new();
        h.append("x-canary", HeaderValue::from_static("0"));
        h.append("x-canary", HeaderValue::from_static("1"));
        let m = |rule| HeaderMatch {
            name: HeaderName::from_static("x-canary"),
            rule,
        };
        assert!(m(HeaderRule::Value(HeaderValue::from_static("1"))).matches(&h));
        assert!(!m(HeaderRule::Value(HeaderValue::from_static("2"))).matches(&h));
        assert!(m(HeaderRule::Present(true)).matches(&h));
        assert!(!m(HeaderRule::Present(false)).matches(&h));
        assert!(m(HeaderRule::Regex(Regex::new("^[1-9]$").expect("re"))).matches(&h));
        assert!(!m(HeaderRule::Regex(Regex::new("^[2-9]$").expect("re"))).matches(&h));
        assert!(m(HeaderRule::Present(false)).matches(&HeaderMap::new()));
    }
}
