//! The HDR latency plot (`--plot FILE.svg`): latency against percentile, with the
//! percentile axis in "nines" (50%, 90%, 99%, 99.9%, …) so the tail gets the room,
//! and latency on a log scale. A small hand-written SVG: no plotting dependency.

use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The deepest percentile shown: 99.999% (five nines).
const NINES_MAX: f64 = 5.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One curve: its (nines, microseconds) points.
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    // Past log10(count) nines the data has no more resolution.
    let nines_max = (h.len() as f64).log10().clamp(0.0, NINES_MAX);
    let steps = (nines_max * 100.0).ceil() as usize;
    (0..=steps)
        .map(|i| {
            let nines = (i as f64 / 100.0).min(nines_max);
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q).max(1) as f64)
        })
        .collect()
}

/// Renders the SVG for the named histograms (empty ones are skipped).
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| (*name, curve(h)))
        .collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo_exp, hi_exp) = (
        lo.min(hi).log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |nines: f64| LEFT + nines / NINES_MAX * plot_w;
    let y = |us: f64| TOP + plot_h - (us.log10() - lo_exp) / (hi_exp - lo_exp) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(title)
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let gx = x(i as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut exp = lo_exp;
    while exp <= hi_exp {
        let gy = y(10f64.powf(exp));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            gy + 4.0,
            micros_label(10f64.powf(exp))
        );
        exp += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, (name, points)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(n, v)| format!("{:.1},{:.1}", x(n), y(v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn micros_label(us: f64) -> String {
    match us {
        v if v >= 1e6 => format!("{}s", v / 1e6),
        v if v >= 1e3 => format!("{}ms", v / 1e3),
        v => format!("{v}us"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_one_line_per_non_empty_series() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let b = a.clone();
        for v in 1..=10_000u64 {
            a.record(v * 10).unwrap();
        }
        let svg = svg("login <c=64>", &[("login", &a), ("retr", &b)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("login &lt;c=64&gt;"));
        assert!(svg.contains(">99.9%<"));
        assert!(svg.contains(">100ms<"), "y axis reaches the max decade");
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn curve_stops_where_the_data_does() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=100u64 {
            h.record(v).unwrap();
        }
        let points = curve(&h);
        let last = points.last().unwrap();
        assert!((last.0 - 2.0).abs() < 1e-9, "100 samples give two nines");
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1), "monotone");
    }
}
