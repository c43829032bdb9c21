//! The two exposition formats `/metrics` speaks: OpenMetrics 1.0 (what prometheus-client
//! writes, the default) and the Prometheus text format 0.0.4, for clients that ask for
//! `text/plain` (older scrapers, `promtool check metrics`, curl users).
//!
//! 0.0.4 from OpenMetrics: a counter family `x` is named `x_total` in its HELP and TYPE lines
//! (its samples already are) and loses `x_created` samples; `unknown` is `untyped`, `info`
//! is a gauge; `# UNIT` and `# EOF` go; HELP text keeps only the `\\` and `\n` escapes.

/// The Content-Type of each format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The format an `Accept` header asks for: text 0.0.4 only when it names `text/plain` and not
/// OpenMetrics (Prometheus itself sends both, OpenMetrics first).
pub fn wants_text_004(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("text/plain") && !a.contains("application/openmetrics-text")
    })
}

/// `openmetrics` (prometheus-client's output) in the text format 0.0.4.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let is_counter = |name: &str| counters.contains(&name);
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = family_name(name, is_counter(name));
            out.push_str(&format!("# HELP {name} {}\n", text.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "unknown" => "untyped",
                "info" => "gauge",
                other => other,
            };
            out.push_str(&format!(
                "# TYPE {} {kind}\n",
                family_name(name, is_counter(name))
            ));
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        if sample.strip_suffix("_created").is_some_and(&is_counter) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn family_name(name: &str, counter: bool) -> String {
    if counter && !name.ends_with("_total") {
        format!("{name}_total")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_in_text_004() {
        let om = "# HELP lb_requests Requests \\\"served\\\".\n# TYPE lb_requests counter\n\
                  lb_requests_total{a=\"1\"} 3\nlb_requests_created{a=\"1\"} 1.5\n\
                  # HELP lb_up Up.\n# TYPE lb_up gauge\nlb_up 1\n\
                  # HELP lb_s Seconds.\n# TYPE lb_s histogram\n# UNIT lb_s seconds\n\
                  lb_s_bucket{le=\"+Inf\"} 1\nlb_s_sum 0.1\nlb_s_count 1\n# EOF\n";
        let text = to_text_004(om);
        assert_eq!(
            text,
            "# HELP lb_requests_total Requests \"served\".\n# TYPE lb_requests_total counter\n\
             lb_requests_total{a=\"1\"} 3\n\
             # HELP lb_up Up.\n# TYPE lb_up gauge\nlb_up 1\n\
             # HELP lb_s Seconds.\n# TYPE lb_s histogram\n\
             lb_s_bucket{le=\"+Inf\"} 1\nlb_s_sum 0.1\nlb_s_count 1\n"
        );
    }

    #[test]
    fn negotiation() {
        assert!(!wants_text_004(None));
        assert!(!wants_text_004(Some("*/*")));
        assert!(wants_text_004(Some("text/plain")));
        assert!(wants_text_004(Some(
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_text_004(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
    }
}
