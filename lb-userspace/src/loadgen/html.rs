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

/// One plot line: (x, y) points.
type Points = Vec<(f64, f64)>;
/// Axis ticks: (x, text).
type Ticks = Vec<(f64, String)>;

/// Colours of the series of one plot, in order (a run, or run A and run B of a comparison).
const COLOURS: [&str; 2] = ["#1f6feb", "#d1242f"];

/// A line plot of one or more named series (a legend when more than one); `x_labels` are
/// (x, text) ticks; `axes` names the x and y axes.
fn plot(
    title: &str,
    series: &[(&str, Points)],
    x_labels: &[(f64, String)],
    y_unit: &str,
    axes: (&str, &str),
) -> String {
    let mut svg = String::new();
    let (x_max, y_max) = series
        .iter()
        .flat_map(|(_, points)| points)
        .fold((1e-9f64, 1e-9f64), |(xm, ym), (x, y)| {
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
    for (i, ((name, points), colour)) in series.iter().zip(COLOURS.iter().cycle()).enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        if series.len() > 1 {
            let _ = write!(
                svg,
                r##"<text x="{x}" y="{y}" font-size="12" fill="{colour}">{}</text>"##,
                escape(name),
                x = PAD_LEFT + 10.0,
                y = PAD - 24.0 + 14.0 * i as f64
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Percentile-curve points with x in "nines" (so the tail gets the room it deserves), and
/// the x ticks up to the longest curve.
fn percentile_points(curves: &[&[(f64, u64)]]) -> (Vec<Points>, Ticks) {
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-9).log10();
    let series: Vec<Points> = curves
        .iter()
        .map(|curve| {
            curve
                .iter()
                .map(|(p, us)| (nines(*p), *us as f64 / 1000.0))
                .collect()
        })
        .collect();
    let x_max = series
        .iter()
        .filter_map(|points| points.last().map(|(x, _)| *x))
        .fold(0.0f64, f64::max);
    let labels = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
        .into_iter()
        .filter(|p| nines(*p) <= x_max + 1e-9)
        .map(|p| (nines(p), format!("p{p}")))
        .collect();
    (series, labels)
}

/// Responses-per-second points of each run, and x ticks for the longest.
fn rate_points(runs: &[&[u64]]) -> (Vec<Points>, Ticks) {
    let series: Vec<Points> = runs
        .iter()
        .map(|per_second| {
            per_second
                .iter()
                .enumerate()
                .map(|(s, n)| (s as f64, *n as f64))
                .collect()
        })
        .collect();
    let len = runs.iter().map(|r| r.len()).max().unwrap_or(0);
    let step = (len / 10).max(1);
    let labels = (0..len)
        .step_by(step)
        .map(|s| (s as f64, format!("{s}s")))
        .collect();
    (series, labels)
}

/// The page's head and title.
fn page_start(title: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}}\
         pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap}}td code{{word-break:break-all}}</style></head><body><h1>{title}</h1>"
    )
}

/// A run's metadata as a table.
fn meta_table(page: &mut String, meta: &[(String, String)]) {
    if meta.is_empty() {
        return;
    }
    page.push_str("<table>");
    for (name, value) in meta {
        let _ = write!(
            page,
            "<tr><th align=\"left\">{}</th><td><code>{}</code></td></tr>",
            escape(name),
            escape(value)
        );
    }
    page.push_str("</table>");
}

/// The latency-by-percentile and requests-per-second plots, one series per run `names`.
fn push_plots(page: &mut String, names: &[&str], curves: &[&[(f64, u64)]], rates: &[&[u64]]) {
    let (curves, labels) = percentile_points(curves);
    let named: Vec<(&str, Points)> = names.iter().copied().zip(curves).collect();
    page.push_str(&plot(
        "Latency by percentile",
        &named,
        &labels,
        "ms",
        ("percentile", "latency"),
    ));
    let (rates, labels) = rate_points(rates);
    let named: Vec<(&str, Points)> = names.iter().copied().zip(rates).collect();
    page.push_str(&plot(
        "Requests per second",
        &named,
        &labels,
        "",
        ("time (whole seconds of the run)", "responses/s"),
    ));
}

/// `lb bench compare --html`: both runs' metadata, the comparison table, and both runs in
/// each plot.
pub fn render_comparison(
    (name_a, a): (&str, &super::compare::SavedRun),
    (name_b, b): (&str, &super::compare::SavedRun),
    table: &str,
) -> String {
    let mut page = page_start("lb bench comparison");
    for (name, run) in [(name_a, a), (name_b, b)] {
        let _ = write!(page, "<h3>{}</h3>", escape(name));
        meta_table(&mut page, &run.meta);
    }
    let _ = write!(page, "<pre>{}</pre>", escape(table));
    push_plots(
        &mut page,
        &[name_a, name_b],
        &[&a.percentile_curve, &b.percentile_curve],
        &[&a.per_second, &b.per_second],
    );
    page.push_str("</body></html>\n");
    page
}

pub fn render(report: &BenchReport) -> String {
    let mut page = page_start("lb bench report");
    meta_table(&mut page, &report.meta);
    let _ = write!(page, "<pre>{}</pre>", escape(&report.to_string()));
    push_plots(
        &mut page,
        &["responses"],
        &[&report.percentile_curve],
        &[&report.per_second],
    );
    page.push_str("</body></html>\n");
    page
}
