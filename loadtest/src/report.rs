//! Merging agent reports, and the three forms of the result: a table on the terminal, a JSON
//! file for machines, and an SVG page (latency over time and its distribution) for people.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::wire::{Buckets, ConnectReport, PhaseReport, histogram};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

fn merged<'a>(buckets: impl Iterator<Item = &'a Buckets>) -> Histogram<u64> {
    let mut h = histogram();
    for b in buckets {
        b.add_to(&mut h);
    }
    h
}

/// Connections, merged over agents.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ConnectSummary {
    pub(crate) attempted: u64,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Connections a second, over the slowest agent's time.
    pub(crate) rate_per_s: f64,
    pub(crate) elapsed_s: f64,
    pub(crate) latency: Percentiles,
}

impl ConnectSummary {
    pub(crate) fn merge(reports: &[ConnectReport]) -> Self {
        let mut summary = Self::default();
        for r in reports {
            summary.connected += r.connected;
            summary.failed += r.failed;
            for (k, v) in &r.errors {
                *summary.errors.entry(k.clone()).or_default() += v;
            }
        }
        summary.attempted = summary.connected + summary.failed;
        summary.elapsed_s = reports.iter().map(|r| r.elapsed_ms).max().unwrap_or(0) as f64 / 1000.0;
        summary.rate_per_s = summary.connected as f64 / summary.elapsed_s.max(1e-3);
        summary.latency = Percentiles::of(&merged(reports.iter().map(|r| &r.latency)));
        summary
    }
}

/// A phase, merged over agents.
#[derive(Debug, Default, Serialize)]
pub(crate) struct PhaseSummary {
    /// Messages a second asked for.
    pub(crate) rate_in: f64,
    pub(crate) duration_s: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    /// Frames the harness could not read as protocol envelopes.
    pub(crate) unreadable: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) deliveries_per_s: f64,
    /// Intended send time to delivery.
    pub(crate) latency: Percentiles,
    /// Intended send time to the sender's ack.
    pub(crate) ack_latency: Percentiles,
    /// Delivery latency by second.
    pub(crate) per_second: Vec<Percentiles>,
    /// Sockets closed by the server, by close code.
    pub(crate) closed: BTreeMap<String, u64>,
    /// CPU time of the server processes given with `--server-pids`, per delivery.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    #[serde(skip)]
    pub(crate) histogram: Option<Histogram<u64>>,
}

impl PhaseSummary {
    /// Merges the agents' reports. `rooms_of_senders` maps each sender to its room; every
    /// socket of a room expects every message its room's senders sent.
    pub(crate) fn merge(
        reports: &[PhaseReport],
        room_of_sender: &HashMap<u32, String>,
        rate_in: f64,
        duration_s: f64,
    ) -> Self {
        let mut sent_by_room: HashMap<&str, BTreeMap<u32, u64>> = HashMap::new();
        let mut summary = Self {
            rate_in,
            duration_s,
            ..Self::default()
        };
        for report in reports {
            summary.acked += report.acked;
            summary.errors += report.errors;
            summary.unreadable += report.unreadable;
            for (&sender, &count) in &report.sent {
                summary.sent += count;
                if let Some(room) = room_of_sender.get(&sender) {
                    sent_by_room.entry(room).or_default().insert(sender, count);
                }
            }
            for (code, n) in &report.closed {
                *summary.closed.entry(code.clone()).or_default() += n;
            }
        }
        for receipts in reports.iter().flat_map(|r| &r.receipts) {
            let Some(senders) = sent_by_room.get(receipts.room.as_str()) else {
                continue;
            };
            for (sender, &sent) in senders {
                summary.expected_deliveries += sent;
                let got = receipts.from.get(sender).copied().unwrap_or_default();
                summary.delivered += got.unique;
                summary.duplicated += got.duplicate;
                summary.out_of_order += got.out_of_order;
                summary.lost += sent.saturating_sub(got.unique);
            }
        }
        summary.deliveries_per_s = summary.delivered as f64 / duration_s.max(1e-3);
        let h = merged(reports.iter().map(|r| &r.latency));
        summary.latency = Percentiles::of(&h);
        summary.histogram = Some(h);
        summary.ack_latency = Percentiles::of(&merged(reports.iter().map(|r| &r.ack_latency)));
        let seconds = reports
            .iter()
            .map(|r| r.per_second.len())
            .max()
            .unwrap_or(0);
        summary.per_second = (0..seconds)
            .map(|s| Percentiles::of(&merged(reports.iter().filter_map(|r| r.per_second.get(s)))))
            .collect();
        summary
    }

    /// Whether nothing was lost, duplicated, refused, cut off or unreadable.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.errors == 0
            && self.unreadable == 0
            && self.closed.is_empty()
    }
}

/// The whole run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RunReport {
    pub(crate) scenario: String,
    pub(crate) run_id: String,
    pub(crate) started_at: String,
    pub(crate) settings: serde_json::Value,
    pub(crate) connect: ConnectSummary,
    pub(crate) phases: Vec<PhaseSummary>,
    pub(crate) storm: Option<ConnectSummary>,
    /// Gateway memory per connection (RSS growth over the connections), bytes.
    pub(crate) gateway_bytes_per_connection: Option<f64>,
    /// The highest rate whose phase held the bound (`ramp`).
    pub(crate) highest_rate_held: Option<f64>,
    pub(crate) notes: Vec<String>,
}

/// What a run needs of the gateways: their abuse limits would refuse a load run.
const LIMITS_HINT: &str = "note: the gateways' rate limits refuse a load run as abuse; start them with \
     --message-rate 0 --connect-rate-per-ip 0 (deploy/local-cluster.sh: GATEWAY_FLAGS)";

impl RunReport {
    /// The table for the terminal.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let c = &self.connect;
        let _ = writeln!(out, "scenario {} (run {})", self.scenario, self.run_id);
        let _ = writeln!(
            out,
            "connections: {} of {} in {:.1} s ({:.0}/s), failed {} {:?}; connect p50 {:.1} ms p99 {:.1} ms",
            c.connected,
            c.attempted,
            c.elapsed_s,
            c.rate_per_s,
            c.failed,
            c.errors,
            c.latency.p50,
            c.latency.p99
        );
        if c.failed > 0 {
            let _ = writeln!(out, "{LIMITS_HINT}");
        }
        if let Some(bytes) = self.gateway_bytes_per_connection {
            let _ = writeln!(
                out,
                "gateway memory per connection: {:.1} KiB",
                bytes / 1024.0
            );
        }
        if !self.phases.is_empty() {
            let _ = writeln!(
                out,
                "{:>9} {:>10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>5} {:>5} {:>7}",
                "rate in/s",
                "deliv/s",
                "delivered",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9",
                "max ms",
                "ack p99",
                "lost",
                "dup",
                "ooo",
                "cpu µs"
            );
        }
        for p in &self.phases {
            let _ = writeln!(
                out,
                "{:>9.0} {:>10.0} {:>9} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>8.2} {:>6} {:>5} {:>5} {:>7}",
                p.rate_in,
                p.deliveries_per_s,
                p.delivered,
                p.latency.p50,
                p.latency.p90,
                p.latency.p99,
                p.latency.p999,
                p.latency.max,
                p.ack_latency.p99,
                p.lost,
                p.duplicated,
                p.out_of_order,
                p.server_cpu_us_per_delivery
                    .map_or("-".to_owned(), |v| format!("{v:.1}"))
            );
            if p.errors > 0 || !p.closed.is_empty() {
                let _ = writeln!(
                    out,
                    "          errors {}, closed by the server {:?}",
                    p.errors, p.closed
                );
                let _ = writeln!(out, "          {LIMITS_HINT}");
            }
            if p.unreadable > 0 {
                let _ = writeln!(
                    out,
                    "          {} frames were not protocol envelopes (not JSON, or without event or message)",
                    p.unreadable
                );
            }
        }
        if let Some(storm) = &self.storm {
            let _ = writeln!(
                out,
                "storm: {} of {} back in {:.2} s, failed {} {:?}",
                storm.connected, storm.attempted, storm.elapsed_s, storm.failed, storm.errors
            );
        }
        if let Some(rate) = self.highest_rate_held {
            let _ = writeln!(out, "highest rate that held: {rate:.0} messages/s in");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// Writes `report.json` and `report.svg` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.svg"), self.svg())?;
        Ok(())
    }

    fn svg(&self) -> String {
        let (w, h, pad) = (900.0, 300.0, 50.0);
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
            2.0 * h + 60.0
        );
        let _ = write!(
            svg,
            r#"<text x="{pad}" y="20" font-size="14">{} — run {}</text>"#,
            self.scenario, self.run_id
        );
        // Latency over time: every phase's seconds one after another.
        let seconds: Vec<Percentiles> = self
            .phases
            .iter()
            .flat_map(|p| p.per_second.iter().copied())
            .collect();
        let top = seconds.iter().map(|s| s.max).fold(1.0_f64, f64::max);
        let x = |i: usize| {
            pad + (w - 2.0 * pad) * i as f64 / seconds.len().max(2).saturating_sub(1) as f64
        };
        let y = |v: f64, y0: f64| y0 + h - pad - (h - 2.0 * pad) * (v / top).min(1.0);
        chart_frame(
            &mut svg,
            "delivery latency over time (ms, by second)",
            30.0,
            w,
            h,
            pad,
            top,
            "s",
        );
        let series_of: [(Series, &str); 3] = [
            (|p| p.p50, "#2b7"),
            (|p| p.p99, "#e80"),
            (|p| p.max, "#c33"),
        ];
        for (series, color) in series_of {
            let points: Vec<String> = seconds
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{:.1},{:.1}", x(i), y(series(s), 30.0)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{}" y="45" fill="#2b7">p50</text><text x="{}" y="45" fill="#e80">p99</text><text x="{}" y="45" fill="#c33">max</text>"##,
            w - 150.0,
            w - 110.0,
            w - 70.0
        );
        // Distribution: latency at each percentile of the last phase, on a "nines" axis.
        if let Some(hist) = self
            .phases
            .iter()
            .rev()
            .find_map(|p| p.histogram.as_ref())
            .filter(|h| !h.is_empty())
        {
            let y0 = h + 30.0;
            let top = hist.max() as f64 / 1000.0;
            chart_frame(
                &mut svg,
                "delivery latency distribution (ms by percentile, last phase)",
                y0,
                w,
                h,
                pad,
                top.max(0.001),
                "",
            );
            let nines = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];
            let px = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (nines.len() - 1) as f64;
            let points: Vec<String> = nines
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let v = hist.value_at_quantile(*q) as f64 / 1000.0;
                    format!(
                        "{:.1},{:.1}",
                        px(i),
                        y0 + h - pad - (h - 2.0 * pad) * (v / top.max(0.001))
                    )
                })
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="#36c" stroke-width="2" points="{}"/>"##,
                points.join(" ")
            );
            for (i, label) in ["0", "50%", "90%", "99%", "99.9%", "99.99%", "max"]
                .iter()
                .enumerate()
            {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                    px(i),
                    y0 + h - pad + 16.0
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// One line of the latency-over-time chart.
type Series = fn(&Percentiles) -> f64;

#[allow(clippy::too_many_arguments)]
fn chart_frame(
    svg: &mut String,
    title: &str,
    y0: f64,
    w: f64,
    h: f64,
    pad: f64,
    top: f64,
    unit: &str,
) {
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="{:.1}">{title}</text><rect x="{pad}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="end">{top:.1}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text><text x="{:.1}" y="{:.1}">{unit}</text>"##,
        y0 + pad - 8.0,
        y0 + pad,
        w - 2.0 * pad,
        h - 2.0 * pad,
        pad - 4.0,
        y0 + pad + 4.0,
        pad - 4.0,
        y0 + h - pad,
        w - pad + 4.0,
        y0 + h - pad
    );
}
