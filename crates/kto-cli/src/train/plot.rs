//! Line charts of logged metrics against the step, as standalone SVG files.

use std::fmt::Write;

use serde_json::Value;

/// One chart: `series` are metric keys drawn on a shared y axis.
pub struct Chart<'a> {
    pub title: &'a str,
    pub series: &'a [&'a str],
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// An SVG chart of `chart.series` from `history` (log events with a `step`); `None` when no
/// event has any of the series.
pub fn svg(chart: &Chart<'_>, history: &[Value]) -> Option<String> {
    let points: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|key| {
            history
                .iter()
                .filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(*key)?.as_f64()?)))
                .filter(|(_, y)| y.is_finite())
                .collect()
        })
        .collect();
    let all: Vec<(f64, f64)> = points.iter().flatten().copied().collect();
    if all.is_empty() {
        return None;
    }
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 70.0, 20.0, 40.0, 40.0);
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    if x1 <= x0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
        y0 -= pad;
        y1 += pad;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        chart.title
    );
    // Axes with min/max labels.
    let _ = writeln!(out, "<path d=\"M{left} {top} V{} H{}\" stroke=\"black\" fill=\"none\"/>", h - bottom, w - right);
    for (y, label) in [(y0, y0), (y1, y1), ((y0 + y1) / 2.0, (y0 + y1) / 2.0)] {
        let _ =
            writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", left - 6.0, sy(y) + 4.0, fmt(label));
    }
    for x in [x0, x1] {
        let _ =
            writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", sx(x), h - bottom + 16.0, fmt(x));
    }
    let _ =
        writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>", (left + w - right) / 2.0, h - 6.0);
    for (k, (key, pts)) in chart.series.iter().zip(&points).enumerate() {
        let color = COLORS[k % COLORS.len()];
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .enumerate()
            .map(|(i, (x, y))| format!("{}{:.2} {:.2}", if i == 0 { "M" } else { "L" }, sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(out, "<path d=\"{}\" stroke=\"{color}\" stroke-width=\"1.5\" fill=\"none\"/>", path.join(" "));
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{key}</text>",
            left + 10.0,
            top + 14.0 + 14.0 * k as f64
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

fn fmt(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) { format!("{v:.2e}") } else { format!("{v:.4}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series_and_skips_empty_charts() {
        let history: Vec<Value> =
            (1..=3).map(|s| serde_json::json!({"step": s, "loss": 0.5 - 0.01 * f64::from(s), "kl": 0.0})).collect();
        let chart = svg(&Chart { title: "loss", series: &["loss", "kl"] }, &history).expect("has data");
        assert!(chart.starts_with("<svg"));
        assert_eq!(chart.matches("<path d=\"M").count(), 3, "axes plus two series");
        assert!(svg(&Chart { title: "none", series: &["rewards/margins"] }, &history).is_none());
    }
}
