//! `--html FILE`: one self-contained page (inline SVG, no external assets) with the summary, a
//! latency-by-percentile plot and a requests-per-second-over-time plot.
use std::fmt::Write as _;

use super::BenchReport;

const W: f64 = 720.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line plot; `x_labels` are (x, text) ticks.
fn plot(title: &str, points: &[(f64, f64)], x_labels: &[(f64, String)], y_unit: &str) -> String {
    let mut svg = String::new();
    let (x_max, y_max) = points.iter().fold((1e-9f64, 1e-9f64), |(xm, ym), (x, y)| {
        (xm.max(*x), ym.max(*y))
    });
    let sx = |x: f64| PAD + x / x_max * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y / y_max * (H - 2.0 * PAD);
    let _ = write!(
        svg,
        r#"<h2>{}</h2><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">"#,
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#888"/>"##,
        b = H - PAD,
        r = W - PAD
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{yy}" font-size="11" text-anchor="end" fill="#444">{y:.2}{y_unit}</text>"##,
            x = PAD - 4.0,
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
         pre{background:#f4f4f4;padding:1em}</style></head><body><h1>lb bench report</h1>",
    );
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
    page.push_str(&plot("Latency by percentile", &points, &labels, "ms"));
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
    page.push_str(&plot("Requests per second", &rps, &labels, ""));
    page.push_str("</body></html>\n");
    page
}
