//! Results: rows of repeated samples, their medians, the ratios between targets (computed
//! per repetition, then the median taken), a human table and JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::load::{Sample, Scenario};

/// One sample reduced to the numbers reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    /// Requests per second.
    pub(crate) throughput: f64,
    /// Latency quantiles, microseconds.
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// Measured requests.
    pub(crate) requests: u64,
    /// Failed requests by error name.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Average bytes per request frame / reply frame.
    pub(crate) req_bytes: f64,
    pub(crate) reply_bytes: f64,
}

impl From<&Sample> for Point {
    fn from(s: &Sample) -> Point {
        Point {
            throughput: s.throughput(),
            p50_us: s.quantile_us(0.5),
            p99_us: s.quantile_us(0.99),
            p999_us: s.quantile_us(0.999),
            requests: s.requests,
            errors: s.errors.clone(),
            req_bytes: s.req_bytes,
            reply_bytes: s.reply_bytes,
        }
    }
}

/// Which quantity of a point.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Metric {
    Throughput,
    P50,
    P99,
    P999,
}

impl Metric {
    fn of(self, p: &Point) -> f64 {
        match self {
            Metric::Throughput => p.throughput,
            Metric::P50 => p.p50_us,
            Metric::P99 => p.p99_us,
            Metric::P999 => p.p999_us,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::P999 => "p99.9",
        }
    }
}

/// A target on a case (a scenario for sessync, a request mix for Redis and echo), with one
/// point per repetition.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) target: String,
    pub(crate) case: String,
    pub(crate) what: String,
    pub(crate) runs: Vec<Point>,
    /// The latencies of every repetition, merged (for the plot).
    #[serde(skip)]
    pub(crate) hist: Option<Histogram<u64>>,
}

impl Row {
    pub(crate) fn median(&self, m: Metric) -> f64 {
        median(self.runs.iter().map(|p| m.of(p)).collect())
    }

    fn errors(&self) -> u64 {
        self.runs.iter().flat_map(|p| p.errors.values()).sum()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A ratio between two rows, per repetition.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) name: String,
    pub(crate) median: f64,
    pub(crate) runs: Vec<f64>,
    /// "higher" when a larger value is better for sessync, "lower" otherwise.
    pub(crate) better: &'static str,
}

/// Everything measured in one invocation.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
}

impl Report {
    /// Adds the sample of one repetition to its row.
    pub(crate) fn add(&mut self, target: &str, case: &str, what: &str, sample: &Sample) {
        let point = Point::from(sample);
        match self
            .rows
            .iter_mut()
            .find(|r| r.target == target && r.case == case)
        {
            Some(r) => {
                r.runs.push(point);
                match &mut r.hist {
                    // Same bounds everywhere (load::new_hist), so adding cannot fail.
                    Some(h) => {
                        let _ = h.add(&sample.hist);
                    }
                    None => r.hist = Some(sample.hist.clone()),
                }
            }
            None => self.rows.push(Row {
                target: target.into(),
                case: case.into(),
                what: what.into(),
                runs: vec![point],
                hist: Some(sample.hist.clone()),
            }),
        }
    }

    /// Writes the SVG plot of every row: latency CDF and throughput (see `plot`).
    pub(crate) fn plot(&self, path: &std::path::Path, title: &str) -> anyhow::Result<()> {
        let series: Vec<crate::plot::Series<'_>> = self
            .rows
            .iter()
            .filter_map(|r| {
                Some(crate::plot::Series {
                    label: format!("{} {}", r.target, r.case),
                    hist: r.hist.as_ref()?,
                    throughput: r.median(Metric::Throughput),
                })
            })
            .collect();
        crate::plot::write(path, title, &series)
    }

    fn row(&self, target: &str, case: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target && r.case == case)
    }

    fn ratio(&self, name: String, a: &Row, b: &Row, m: Metric) -> Option<Ratio> {
        let runs: Vec<f64> = a
            .runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| m.of(x) / m.of(y))
            .collect();
        if runs.is_empty() {
            return None;
        }
        Some(Ratio {
            name,
            median: median(runs.clone()),
            runs,
            better: match m {
                Metric::Throughput => "higher",
                _ => "lower",
            },
        })
    }

    /// The ratios the targets are stated in, for every scenario measured.
    pub(crate) fn ratios(&self, scenarios: &[Scenario], echo_case: Option<&str>) -> Vec<Ratio> {
        let mut out = Vec::new();
        for s in scenarios {
            let Some(ours) = self.row("sessync", s.name()) else {
                continue;
            };
            let mix = s.mix().name();
            for redis in ["redis-hash", "redis-string"] {
                if let Some(r) = self.row(redis, mix) {
                    out.extend(self.ratio(
                        format!("{}: sessync/{redis} throughput", s.name()),
                        ours,
                        r,
                        Metric::Throughput,
                    ));
                    for m in [Metric::P50, Metric::P99] {
                        out.extend(self.ratio(
                            format!("{}: sessync/{redis} {}", s.name(), m.name()),
                            ours,
                            r,
                            m,
                        ));
                    }
                }
            }
            if let Some(e) = echo_case.and_then(|c| self.row("echo", c)) {
                for m in [Metric::P50, Metric::P99, Metric::P999, Metric::Throughput] {
                    out.extend(self.ratio(format!("{}: sessync/echo {}", s.name(), m.name()), ours, e, m));
                }
            }
            if *s != Scenario::Local {
                if let Some(local) = self.row("sessync", Scenario::Local.name()) {
                    for m in [Metric::P50, Metric::P99, Metric::Throughput] {
                        out.extend(self.ratio(
                            format!("{}: {}/local {}", s.name(), s.name(), m.name()),
                            ours,
                            local,
                            m,
                        ));
                    }
                }
            }
        }
        out
    }

    /// The `--against-nodes` rows as ratios to the `--nodes` rows of the same scenario.
    pub(crate) fn against(&self, scenarios: &[Scenario], label: &str) -> Vec<Ratio> {
        let mut out = Vec::new();
        for s in scenarios {
            let (Some(b), Some(ours)) = (self.row(label, s.name()), self.row("sessync", s.name())) else {
                continue;
            };
            for m in [Metric::Throughput, Metric::P50, Metric::P99] {
                out.extend(self.ratio(format!("{}: {label}/sessync {}", s.name(), m.name()), b, ours, m));
            }
        }
        out
    }

    /// The human table: medians, then ratios.
    pub(crate) fn print(&self, header: &str, ratios: &[Ratio]) {
        let reps = self.rows.first().map_or(0, |r| r.runs.len());
        println!("{header}");
        println!(
            "medians of {reps} run(s); absolute numbers are this machine's noise, the ratios are the result"
        );
        println!();
        println!(
            "{:<13} {:<10} {:>12} {:>10} {:>10} {:>10} {:>8} {:>7} {:>8}  what",
            "target", "case", "req/s", "p50 us", "p99 us", "p99.9 us", "errors", "req B", "reply B"
        );
        for r in &self.rows {
            let last = r.runs.last();
            println!(
                "{:<13} {:<10} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>7.0} {:>8.0}  {}",
                r.target,
                r.case,
                r.median(Metric::Throughput),
                r.median(Metric::P50),
                r.median(Metric::P99),
                r.median(Metric::P999),
                r.errors(),
                last.map_or(0.0, |p| p.req_bytes),
                last.map_or(0.0, |p| p.reply_bytes),
                r.what,
            );
        }
        let errs: BTreeMap<&str, u64> = self
            .rows
            .iter()
            .flat_map(|r| r.runs.iter().flat_map(|p| p.errors.iter()))
            .fold(BTreeMap::new(), |mut m, (k, v)| {
                *m.entry(k.as_str()).or_insert(0) += v;
                m
            });
        if !errs.is_empty() {
            println!("errors: {errs:?}");
        }
        if !ratios.is_empty() {
            println!();
            println!("{:<44} {:>8}  {:<28} better", "ratio", "median", "per run");
            for r in ratios {
                let runs: Vec<String> = r.runs.iter().map(|x| format!("{x:.2}")).collect();
                println!(
                    "{:<44} {:>7.2}x  {:<28} {}",
                    r.name,
                    r.median,
                    runs.join(" "),
                    r.better
                );
            }
        }
    }

    /// The JSON document: configuration, rows with every run, and the ratios.
    pub(crate) fn json(&self, config: serde_json::Value, ratios: &[Ratio]) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "target": r.target,
                    "case": r.case,
                    "what": r.what,
                    "median": {
                        "throughput": r.median(Metric::Throughput),
                        "p50_us": r.median(Metric::P50),
                        "p99_us": r.median(Metric::P99),
                        "p999_us": r.median(Metric::P999),
                    },
                    "errors": r.errors(),
                    "runs": r.runs,
                })
            })
            .collect();
        json!({ "config": config, "rows": rows, "ratios": ratios })
    }
}
