//! `--html FILE`: one self-contained page (inline SVG, no external assets) with the run's
//! metadata (target, command, date, lb version), the summary, a latency-by-percentile plot
//! and a requests-per-second-over-time plot (whole seconds only: a last partial second would
//! read as a drop).
use std::fmt::Write as _;

use super::BenchReport;

const W: f64 = 720.0;
const H: f64 = 280.0;
const PAD: f64 = 48.0;
/// Room left of the y axis for its labels (the widest, e.g. "12.3k", fits).
const PAD_LEFT: f64 = 72.0;

/// A y-axis value in at most five characters plus the unit.
fn compact(y: f64, unit: &str) -> String {
    if y >= 10_000.0 {
        format!("{:.1}k{unit}", y / 1000.0)
    } else if y >= 100.0 {
        format!("{y:.0}{unit}")
    } else {
        format!("{y:.2}{unit}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line plot; `x_labels` are (x, text) ticks; `axes` names the x and y axes.
fn plot(
    title: &str,
    points: &[(f64, f64)],
    x_labels: &[(f64, String)],
    y_unit: &str,
    axes: (&str, &str),
) -> String {
    let mut svg = String::new();
    let (x_max, y_max) = points.iter().fold((1e-9f64, 1e-9f64), |(xm, ym), (x, y)| {
        (xm.max(*x), ym.max(*y))
    });
    let sx = |x: f64| PAD_LEFT + x / x_max * (W - PAD_LEFT - PAD);
    let sy = |y: f64| H - PAD - y / y_max * (H - 2.0 * PAD);
    let _ = write!(
        svg,
        r#"<h2>{}</h2><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">"#,
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD_LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{PAD_LEFT}" y1="{PAD}" x2="{PAD_LEFT}" y2="{b}" stroke="#888"/>"##,
        b = H - PAD,
        r = W - PAD
    );
    let _ = write!(
        svg,
        r##"<text x="{cx}" y="{by}" font-size="12" text-anchor="middle" fill="#222">{}</text><text x="14" y="{cy}" font-size="12" text-anchor="middle" fill="#222" transform="rotate(-90 14 {cy})">{}</text>"##,
        escape(axes.0),
        escape(axes.1),
        cx = (PAD_LEFT + W - PAD) / 2.0,
        by = H - 8.0,
        cy = H / 2.0
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{yy}" font-size="11" text-anchor="end" fill="#444">{}</text>"##,
            compact(y, y_unit),
            x = PAD_LEFT - 6.0,
            yy = sy(y) + 4.0
        );
    }
    for (x, label) in x_labels {
        let _ = write!(
            svg,
            r##"<text x="{xx}" y="{yy}" font-size="11" text-anchor="middle" fill="#444">{}</text>"##,
            escape(label),
            xx = sx(*x),
            yy = H - PAD + 16.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{}"/></svg>"##,
        path.join(" ")
    );
    svg
}

pub fn render(report: &BenchReport) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>lb bench report</title>\
         <style>body{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}\
         pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}td code{word-break:break-all}</style></head><body><h1>lb bench report</h1>",
    );
    if !report.meta.is_empty() {
        page.push_str("<table>");
        for (name, value) in &report.meta {
            let _ = write!(
                page,
                "<tr><th align=\"left\">{}</th><td><code>{}</code></td></tr>",
                escape(name),
                escape(value)
            );
        }
        page.push_str("</table>");
    }
    let _ = write!(page, "<pre>{}</pre>", escape(&report.to_string()));
    // Percentile plot: x in "nines" so the tail gets the room it deserves.
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-9).log10();
    let points: Vec<(f64, f64)> = report
        .percentile_curve
        .iter()
        .map(|(p, us)| (nines(*p), *us as f64 / 1000.0))
        .collect();
    let labels: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
        .into_iter()
        .filter(|p| points.last().is_some_and(|(x, _)| nines(*p) <= *x + 1e-9))
        .map(|p| (nines(p), format!("p{p}")))
        .collect();
    page.push_str(&plot(
        "Latency by percentile",
        &points,
        &labels,
        "ms",
        ("percentile", "latency"),
    ));
    let rps: Vec<(f64, f64)> = report
        .per_second
        .iter()
        .enumerate()
        .map(|(s, n)| (s as f64, *n as f64))
        .collect();
    let step = (rps.len() / 10).max(1);
    let labels: Vec<(f64, String)> = (0..rps.len())
        .step_by(step)
        .map(|s| (s as f64, format!("{s}s")))
        .collect();
    page.push_str(&plot(
        "Requests per second",
        &rps,
        &labels,
        "",
        ("time (whole seconds of the run)", "responses/s"),
    ));
    page.push_str("</body></html>\n");
    page
}
