//! The SVG written next to `--json-out`: on the left the latency distribution of every row
//! (a CDF: the fraction of requests answered within a latency, on a log-scale latency
//! axis), on the right its throughput (median of the repetitions), one colour per row.
//!
//! plotters with only its SVG backend and line series: text goes into the SVG as `<text>`
//! elements and is laid out by plotters' built-in estimate, so no font library is needed
//! to build or run it.

use std::path::Path;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// What one row of the report contributes to the plot.
pub(crate) struct Series<'a> {
    /// "target case", e.g. "sessync move".
    pub(crate) label: String,
    /// Latencies of every repetition, nanoseconds.
    pub(crate) hist: &'a Histogram<u64>,
    /// Requests per second (median of the repetitions).
    pub(crate) throughput: f64,
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The CDF of a histogram as (latency µs, fraction of requests at or below it), thinned so
/// that consecutive points differ by at least 1% in latency or 0.2% in fraction.
pub(crate) fn cdf(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut last: Option<(f64, f64)> = None;
    for v in hist.iter_recorded() {
        let x = v.value_iterated_to() as f64 / 1000.0;
        let y = v.quantile();
        let keep = match out.last() {
            None => true,
            Some(&(px, py)) => x >= px * 1.01 || y - py >= 0.002,
        };
        if keep {
            out.push((x.max(0.001), y));
            last = None;
        } else {
            last = Some((x.max(0.001), y));
        }
    }
    out.extend(last);
    out
}

/// Writes the plot to `path` (SVG). `title` names the run.
pub(crate) fn write(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let curves: Vec<Vec<(f64, f64)>> = series.iter().map(|s| cdf(s.hist)).collect();
    let lo = curves
        .iter()
        .flat_map(|c| c.first())
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .flat_map(|c| c.last())
        .map(|p| p.0)
        .fold(0.0, f64::max);
    // Whole decades around the data (1 µs .. 1 s when there is none).
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()).max(lo * 10.0),
        )
    } else {
        (1.0, 1e6)
    };
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 15)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(700);

    let mut chart = ChartBuilder::on(&left)
        .caption("latency distribution (CDF)", ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("latency per request, µs (log scale)")
        .y_desc("fraction of requests")
        .x_label_formatter(&|v| format_us(*v))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (s, points)) in series.iter().zip(curves).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|x| e(&x))?;

    let n = series.len().max(1);
    let max = series.iter().map(|s| s.throughput).fold(0.0, f64::max).max(1.0);
    let labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
    let mut bars = ChartBuilder::on(&right)
        .caption("throughput, requests/s", ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(130)
        .build_cartesian_2d(0f64..max * 1.15, (0..n).into_segmented())
        .map_err(|x| e(&x))?;
    bars.configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_labels(5)
        .x_label_formatter(&|v| format_count(*v))
        .draw()
        .map_err(|x| e(&x))?;
    bars.draw_series(series.iter().enumerate().map(|(i, s)| {
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (s.throughput, SegmentValue::Exact(i + 1)),
            ],
            COLORS[i % COLORS.len()].filled(),
        );
        r.set_margin(4, 4, 0, 0);
        r
    }))
    .map_err(|x| e(&x))?;
    bars.draw_series(series.iter().enumerate().map(|(i, s)| {
        Text::new(
            format_count(s.throughput),
            (s.throughput, SegmentValue::CenterOf(i)),
            ("sans-serif", 11),
        )
    }))
    .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn format_us(v: f64) -> String {
    if v >= 1e6 {
        format!("{}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{}ms", v / 1e3)
    } else {
        format!("{v}µs")
    }
}

fn format_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn hist(values_ns: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for v in values_ns {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_one() {
        let h = hist(&(1..=10_000u64).map(|i| i * 1000).collect::<Vec<_>>());
        let c = cdf(&h);
        assert!(c.len() > 10 && c.len() < 2000, "{} points", c.len());
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let (x, y) = *c.last().unwrap();
        assert_eq!(y, 1.0);
        assert!((9_990.0..=10_010.0).contains(&x), "last point at {x} µs");
        // The median: half the requests within ~5 ms.
        let at_half = c.iter().find(|p| p.1 >= 0.5).unwrap().0;
        assert!((4_900.0..=5_100.0).contains(&at_half), "{at_half}");
        assert!(cdf(&hist(&[])).is_empty());
    }
}
