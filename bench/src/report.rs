//! The run's report: a markdown file (tables of absolute figures and ratios) and an SVG chart
//! (latency and throughput per driver).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::common::{fmt_ms, fmt_rate, median, run_bounded, CpuUse, Measurement};
use crate::runner::{describe_counts, Driver, Impl, Key, Runner, Scenario};

/// Medians over the successful repetitions of one cell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub per_s: Option<f64>,
    pub median_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub send_per_s: Option<f64>,
    /// CPU µs per operation: client, server(s), broker.
    pub cpu_us: [Option<f64>; 3],
    /// Whether every repetition failed (the first error is kept).
    pub failed: bool,
}

impl Summary {
    fn cpu(&self) -> String {
        if self.cpu_us.iter().all(Option::is_none) {
            return "n/a".into();
        }
        let f = |x: Option<f64>| x.map(|x| format!("{x:.0}")).unwrap_or_else(|| "?".into());
        let total: f64 = self.cpu_us.iter().flatten().sum();
        format!("{} / {} / {} = {total:.0}", f(self.cpu_us[0]), f(self.cpu_us[1]), f(self.cpu_us[2]))
    }
}

/// The summary of one cell.
pub fn summary(runner: &Runner, key: Key) -> Summary {
    let ms = runner.results.get(&key).cloned().unwrap_or_default();
    let ok: Vec<&Measurement> = ms.iter().filter(|m| m.error.is_none()).collect();
    let pick = |f: fn(&Measurement) -> Option<f64>| median(&ok.iter().filter_map(|m| f(m)).collect::<Vec<_>>());
    let per_op = |f: fn(&CpuUse) -> f64| {
        median(
            &ok.iter()
                .filter_map(|m| Some(f(m.cpu.as_ref()?) * 1e6 / m.ops.filter(|n| *n > 0)? as f64))
                .collect::<Vec<_>>(),
        )
    };
    Summary {
        per_s: pick(|m| m.per_s),
        median_ms: pick(|m| m.median_ms),
        p99_ms: pick(|m| m.p99_ms),
        send_per_s: pick(|m| m.send_per_s),
        cpu_us: [per_op(|c| c.client_s), per_op(|c| c.server_s), per_op(|c| c.broker_s)],
        failed: !ms.is_empty() && ok.is_empty(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fr(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "n/a".into())
}

/// A latency ratio: below 1 is faster.
fn fr_lat(x: Option<f64>) -> String {
    match x {
        Some(x) if x < 1.0 => format!("{x:.2}x ({:.1}x faster)", 1.0 / x),
        other => fr(other),
    }
}

/// `100 B`, `64 KiB`.
pub fn fmt_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn fmt_kb(kb: Option<u64>) -> String {
    kb.map(|kb| format!("{:.1} MiB", kb as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// The implementations measured for `driver` (the summary columns), in column order.
fn columns(runner: &Runner, driver: Driver) -> Vec<Impl> {
    [Impl::Ours, Impl::Raw, Impl::Python]
        .into_iter()
        .filter(|k| runner.results.keys().any(|key| key.0 == driver && key.4 == *k))
        .collect()
}

/// One summary row: a metric of one cell for every column, then the ratios.
struct Row {
    metric: String,
    payload: usize,
    values: Vec<Option<f64>>,
    failed: Vec<bool>,
    latency: bool,
}

fn rows(runner: &Runner, driver: Driver, cols: &[Impl]) -> Vec<Row> {
    let o = &runner.opts;
    let mut out = Vec::new();
    for sc in Scenario::ALL {
        for &payload in &o.payloads {
            let ks: Vec<usize> = if sc == Scenario::Inflight { o.inflight.clone() } else { vec![0] };
            for k in ks {
                let sums: Vec<Summary> = cols.iter().map(|c| summary(runner, (driver, sc, payload, k, *c))).collect();
                if !runner
                    .results
                    .keys()
                    .any(|key| key.0 == driver && key.1 == sc && key.2 == payload && key.3 == k)
                {
                    continue;
                }
                let failed: Vec<bool> = sums.iter().map(|s| s.failed).collect();
                let mut push = |metric: String, f: fn(&Summary) -> Option<f64>, latency: bool| {
                    out.push(Row {
                        metric,
                        payload,
                        values: sums.iter().map(f).collect(),
                        failed: failed.clone(),
                        latency,
                    })
                };
                match sc {
                    Scenario::Seq => {
                        push("a) sequential call, median latency (ms)".into(), |s| s.median_ms, true);
                        push("a) sequential call, p99 latency (ms)".into(), |s| s.p99_ms, true);
                        push("a) sequential calls/s".into(), |s| s.per_s, false);
                    }
                    Scenario::Inflight => {
                        push(format!("b) calls/s, {k} in flight"), |s| s.per_s, false);
                        push(format!("b) latency with {k} in flight, median (ms)"), |s| s.median_ms, true);
                    }
                    Scenario::Cast => {
                        push("c) casts/s until processed".into(), |s| s.per_s, false);
                        push("c) casts/s, send only".into(), |s| s.send_per_s, false);
                    }
                    Scenario::Fanout => push("d) fanout casts/s to 2 servers, until both processed".into(), |s| s.per_s, false),
                    Scenario::Notify => push("e) notifications/s until the listener counted all".into(), |s| s.per_s, false),
                }
            }
        }
    }
    out
}

fn today() -> String {
    let mut c = Command::new("date");
    c.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
    run_bounded(c, Duration::from_secs(5), None)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown date".into())
}

/// The markdown report.
pub fn markdown(runner: &Runner, elapsed: Duration) -> String {
    let o = &runner.opts;
    let mut r = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(r, "# oslo-bench results ({})\n", today());
    let _ = writeln!(
        r,
        "Command: `{}` (run took {:.0} s). Machine: {cores} cores, Linux {}; clients, servers and brokers share the machine, \
         so every figure is whole-system. Implementations are interleaved within each measurement cell (rotating order per \
         repetition). Chart: `latest.svg` next to this file.{}\n",
        o.command_line,
        elapsed.as_secs_f64(),
        kernel.trim(),
        if o.raw_oslo_props {
            " **Raw lapin publishes with oslo's AMQP properties and mandatory calls/replies (`--raw-oslo-props`).**"
        } else {
            ""
        }
    );
    let _ = writeln!(r, "Counts: {}\n", describe_counts(o));
    for &driver in &o.drivers {
        let Some(info) = runner.drivers.get(&driver) else { continue };
        let _ = writeln!(r, "## {}\n", driver.name());
        for (who, why) in &info.skipped {
            let _ = writeln!(r, "- **{who} skipped**: {}", why.replace('|', "/"));
        }
        for n in &info.notes {
            let _ = writeln!(r, "- {n}");
        }
        if !info.skipped.is_empty() || !info.notes.is_empty() {
            let _ = writeln!(r);
        }
        if !info.ran {
            let _ = writeln!(r, "Not measured: nothing could be started for this driver.\n");
            continue;
        }
        let cols = columns(runner, driver);
        let has = |k: Impl| cols.iter().position(|c| *c == k);
        let (ours, raw, py) = (has(Impl::Ours), has(Impl::Raw), has(Impl::Python));
        let mut header = String::from("| metric | payload |");
        let mut sep = String::from("|---|---|");
        for c in &cols {
            let _ = write!(header, " {} |", c.label(driver));
            sep.push_str("---:|");
        }
        if ours.is_some() && raw.is_some() {
            header.push_str(" ours/raw |");
            sep.push_str("---:|");
        }
        if ours.is_some() && py.is_some() {
            header.push_str(" ours/Python |");
            sep.push_str("---:|");
        }
        let _ = writeln!(r, "{header}\n{sep}");
        for row in rows(runner, driver, &cols) {
            let mut line = format!("| {} | {} |", row.metric, fmt_size(row.payload));
            for (v, failed) in row.values.iter().zip(&row.failed) {
                let cell = if *failed {
                    "failed".to_string()
                } else if row.latency {
                    fmt_ms(*v)
                } else {
                    fmt_rate(*v)
                };
                let _ = write!(line, " {cell} |");
            }
            let fmt = |x| if row.latency { fr_lat(x) } else { fr(x) };
            if let (Some(a), Some(b)) = (ours, raw) {
                let _ = write!(line, " {} |", fmt(ratio(row.values[a], row.values[b])));
            }
            if let (Some(a), Some(b)) = (ours, py) {
                let _ = write!(line, " {} |", fmt(ratio(row.values[a], row.values[b])));
            }
            let _ = writeln!(r, "{line}");
        }
        let _ = writeln!(r, "\nPeak RSS (VmHWM) of each process, at the end of the driver's run:\n");
        let _ = writeln!(r, "| implementation | client | server a | server b |\n|---|---:|---:|---:|");
        for c in &cols {
            let label = c.label(driver);
            let get = |what: &str| fmt_kb(info.rss.get(&(label.clone(), what.to_string())).copied().flatten());
            let _ = writeln!(r, "| {label} | {} | {} | {} |", get("client"), get("server a"), get("server b"));
        }
        let _ = writeln!(r);
    }
    targets(runner, &mut r);
    cpu_table(runner, &mut r);
    if let Some(v) = &runner.py_version {
        let _ = writeln!(r, "Python: oslo.messaging {v} (interop/.venv).\n");
    }
    every_measurement(runner, &mut r);
    if !runner.notes.is_empty() {
        let _ = writeln!(r, "\nNotes:\n");
        for n in &runner.notes {
            let _ = writeln!(r, "- {n}");
        }
    }
    r
}

/// The targets of the rabbit issue (#4), at the smallest payload.
fn targets(runner: &Runner, r: &mut String) {
    let o = &runner.opts;
    if !runner.drivers.get(&Driver::Rabbit).is_some_and(|i| i.ran) {
        return;
    }
    let p = o.payloads.iter().copied().min().unwrap_or(100);
    let k = o.inflight.iter().copied().max().unwrap_or(64);
    let s = |sc, k, kind| summary(runner, (Driver::Rabbit, sc, p, k, kind));
    let verdict = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "n/a",
    };
    let (oa, ra, pa, ca) = (
        s(Scenario::Seq, 0, Impl::Ours),
        s(Scenario::Seq, 0, Impl::Raw),
        s(Scenario::Seq, 0, Impl::Python),
        s(Scenario::Seq, 0, Impl::RawOslo),
    );
    let (ob, rb, cb) = (
        s(Scenario::Inflight, k, Impl::Ours),
        s(Scenario::Inflight, k, Impl::Raw),
        s(Scenario::Inflight, k, Impl::RawOslo),
    );
    let (oc, rc, cc, wc) = (
        s(Scenario::Cast, 0, Impl::Ours),
        s(Scenario::Cast, 0, Impl::Raw),
        s(Scenario::Cast, 0, Impl::RawOslo),
        s(Scenario::Cast, 0, Impl::RawWide),
    );
    let _ = writeln!(r, "## rabbit: targets of issue #4 ({})\n", fmt_size(p));
    let _ = writeln!(r, "| target | value | met |\n|---|---|---|");
    let a_raw = ratio(oa.median_ms, ra.median_ms);
    let a_py = ratio(oa.median_ms, pa.median_ms);
    let _ = writeln!(
        r,
        "| sequential call median ≤ 1.25x raw lapin | {} ms vs {} ms = {} | {} |",
        fmt_ms(oa.median_ms),
        fmt_ms(ra.median_ms),
        fr(a_raw),
        verdict(a_raw.map(|x| x <= 1.25))
    );
    let _ = writeln!(
        r,
        "| sequential call median ≥ 4x faster than Python | {} ms vs {} ms = {} | {} |",
        fmt_ms(oa.median_ms),
        fmt_ms(pa.median_ms),
        fr_lat(a_py),
        verdict(a_py.map(|x| x <= 0.25))
    );
    let b_raw = ratio(ob.per_s, rb.per_s);
    let _ = writeln!(
        r,
        "| calls/s with {k} in flight ≥ 0.8x raw lapin | {} vs {} = {} | {} |",
        fmt_rate(ob.per_s),
        fmt_rate(rb.per_s),
        fr(b_raw),
        verdict(b_raw.map(|x| x >= 0.8))
    );
    let _ = writeln!(
        r,
        "| casts ≥ 40,000/s | {} | {} |",
        fmt_rate(oc.per_s),
        verdict(oc.per_s.map(|x| x >= 40_000.0))
    );
    if !o.no_refs {
        let _ = writeln!(
            r,
            "\nThe floor: raw lapin speaking oslo's protocol (requests and casts through a topic exchange, \
             oslo's properties, `mandatory` calls and replies, every publish confirmed), which any \
             oslo-compatible client and server on lapin must send. \"floor/raw\" is what the protocol itself \
             costs; \"ours/floor\" is what our driver adds.\n"
        );
        let _ = writeln!(
            r,
            "| measure | raw lapin | floor | ours | floor/raw | ours/floor |\n|---|---:|---:|---:|---:|---:|"
        );
        let rows = [
            ("sequential call, median (ms)", oa.median_ms, ca.median_ms, ra.median_ms, true),
            ("calls/s, {k} in flight", ob.per_s, cb.per_s, rb.per_s, false),
            ("casts/s", oc.per_s, cc.per_s, rc.per_s, false),
        ];
        for (what, ours, floor, raw, latency) in rows {
            let show = |v: Option<f64>| if latency { fmt_ms(v) } else { fmt_rate(v) };
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} |",
                what.replace("{k}", &k.to_string()),
                show(raw),
                show(floor),
                show(ours),
                fr(ratio(floor, raw)),
                fr(ratio(ours, floor)),
            );
        }
        let _ = writeln!(
            r,
            "\nCasts with {} confirms outstanding (raw lapin, default exchange): {}/s (ours {}).",
            o.wide_window,
            fmt_rate(wc.per_s),
            fr(ratio(oc.per_s, wc.per_s)),
        );
    }
    let _ = writeln!(r);
}

fn cpu_table(runner: &Runner, r: &mut String) {
    let _ = writeln!(
        r,
        "## CPU per operation\n\nµs, client / server(s) / broker = total (each process's CPU time over the measurement, \
         warm-up included, divided by the operations done; the broker is RabbitMQ for rabbit and amqp1, Redis (the \
         matchmaker) for zmq, none for fake):\n"
    );
    let _ = writeln!(
        r,
        "| driver | scenario | payload | implementation | CPU µs/op |\n|---|---|---|---|---:|"
    );
    for key in runner.results.keys() {
        let (driver, sc, payload, k, kind) = *key;
        let s = summary(runner, *key);
        let scenario = if k > 0 {
            format!("{} ({k})", sc.label())
        } else {
            sc.label().to_string()
        };
        let _ = writeln!(
            r,
            "| {} | {scenario} | {} | {} | {} |",
            driver.name(),
            fmt_size(payload),
            kind.label(driver),
            s.cpu()
        );
    }
    let _ = writeln!(r);
}

fn every_measurement(runner: &Runner, r: &mut String) {
    let _ = writeln!(
        r,
        "## Every measurement\n\nforeign CPU = CPU used by processes outside the benchmark and the broker, % of the machine.\n"
    );
    let _ = writeln!(
        r,
        "| driver | scenario | payload | implementation | rep | per s | median ms | p99 ms | send-only per s | foreign CPU | notes |"
    );
    let _ = writeln!(r, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for ((driver, sc, payload, k, kind), ms) in &runner.results {
        for (i, m) in ms.iter().enumerate() {
            let _ = writeln!(
                r,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                driver.name(),
                sc.label(),
                if *k > 0 { format!(" ({k})") } else { String::new() },
                fmt_size(*payload),
                kind.label(*driver),
                i + 1,
                fmt_rate(m.per_s),
                fmt_ms(m.median_ms),
                fmt_ms(m.p99_ms),
                fmt_rate(m.send_per_s),
                m.foreign_pct.map(|p| format!("{p:.0} %")).unwrap_or_else(|| "n/a".into()),
                match &m.error {
                    Some(e) => format!("ERROR: {}", e.replace('|', "/").replace('\n', " ")),
                    None => m.note.replace('|', "/"),
                }
            );
        }
    }
    let busy: Vec<f64> = runner.results.values().flatten().filter_map(|m| m.foreign_pct).collect();
    if busy.iter().any(|p| *p > 10.0) {
        let _ = writeln!(
            r,
            "\nWarning: other processes used more than 10 % of the machine during some measurements (max {:.0} %); \
             absolute figures are disturbed, ratios less so.",
            busy.iter().cloned().fold(0.0, f64::max)
        );
    }
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// One bar group: a label and one value per implementation.
struct Group {
    label: String,
    values: Vec<Option<f64>>,
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[String],
    groups: &[Group],
    log: bool,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    if values.is_empty() || groups.is_empty() {
        area.titled(&format!("{title}: no data"), ("sans-serif", 16)).map_err(e)?;
        return Ok(());
    }
    let max = values.iter().cloned().fold(0.0, f64::max);
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let n = groups.len();
    let base = area.get_base_pixel();
    let label_style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let width = 0.8 / series.len().max(1) as f64;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60);
    macro_rules! bars {
        ($chart:expr, $bottom:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(8)
                .y_label_formatter(&|v: &f64| if *v >= 100.0 { fmt_rate(Some(*v)) } else { format!("{v:.2}") })
                .light_line_style(WHITE)
                .y_desc(y_desc)
                .label_style(("sans-serif", 11))
                .draw()
                .map_err(e)?;
            for (si, name) in series.iter().enumerate() {
                let color = COLORS[si % COLORS.len()];
                let rects: Vec<Rectangle<(f64, f64)>> = groups
                    .iter()
                    .enumerate()
                    .filter_map(|(gi, g)| {
                        let v = g.values.get(si).copied().flatten()?;
                        let x0 = gi as f64 + 0.1 + si as f64 * width;
                        Some(Rectangle::new([(x0, $bottom), (x0 + width * 0.9, v)], color.filled()))
                    })
                    .collect();
                chart
                    .draw_series(rects)
                    .map_err(e)?
                    .label(name.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            }
            // Group labels under the x axis (the x axis is numeric: group i spans [i, i+1]).
            for (gi, g) in groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, $bottom));
                area.draw(&Text::new(g.label.clone(), (px - base.0, py - base.1 + 6), label_style.clone()))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(e)?;
        }};
    }
    let x_range = 0.0..n as f64;
    if log {
        let bottom = (min / 2.0).max(1e-3);
        let chart = builder.build_cartesian_2d(x_range, (bottom..max * 10.0).log_scale()).map_err(e)?;
        bars!(chart, bottom);
    } else {
        let chart = builder.build_cartesian_2d(x_range, 0.0..max * 1.5).map_err(e)?;
        bars!(chart, 0.0);
    }
    Ok(())
}

/// The SVG chart: per driver, sequential latency (median and p99 per payload) and throughput
/// (calls/s per in-flight level, casts, fanout casts and notifications at the smallest payload).
pub fn svg(runner: &Runner, path: &Path) -> Result<(), String> {
    let drivers: Vec<Driver> = runner
        .opts
        .drivers
        .iter()
        .copied()
        .filter(|d| runner.drivers.get(d).is_some_and(|i| i.ran))
        .collect();
    if drivers.is_empty() {
        return Err("no driver was measured".into());
    }
    let o = &runner.opts;
    let row_h = 340u32;
    let root = SVGBackend::new(path, (1400, row_h * drivers.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows = root.split_evenly((drivers.len(), 1));
    for (row, driver) in rows.iter().zip(&drivers) {
        let cols = columns(runner, *driver);
        let series: Vec<String> = cols.iter().map(|c| c.label(*driver)).collect();
        let (left, right) = row.split_horizontally(520);
        let mut lat = Vec::new();
        for &p in &o.payloads {
            for (what, f) in [
                ("median", (|s: &Summary| s.median_ms) as fn(&Summary) -> Option<f64>),
                ("p99", |s: &Summary| s.p99_ms),
            ] {
                lat.push(Group {
                    label: format!("{what} {}", fmt_size(p)),
                    values: cols
                        .iter()
                        .map(|c| f(&summary(runner, (*driver, Scenario::Seq, p, 0, *c))))
                        .collect(),
                });
            }
        }
        draw_bars(
            &left,
            &format!("{}: sequential call latency", driver.name()),
            "ms",
            &series,
            &lat,
            false,
        )?;
        let p = o.payloads.iter().copied().min().unwrap_or(100);
        let mut thr = Vec::new();
        for &k in &o.inflight {
            thr.push(Group {
                label: format!("calls, {k} in flight"),
                values: cols
                    .iter()
                    .map(|c| summary(runner, (*driver, Scenario::Inflight, p, k, *c)).per_s)
                    .collect(),
            });
        }
        for (label, sc) in [
            ("casts", Scenario::Cast),
            ("fanout casts", Scenario::Fanout),
            ("notifications", Scenario::Notify),
        ] {
            thr.push(Group {
                label: label.into(),
                values: cols.iter().map(|c| summary(runner, (*driver, sc, p, 0, *c)).per_s).collect(),
            });
        }
        draw_bars(
            &right,
            &format!("{}: throughput per second, {} payload (log scale)", driver.name(), fmt_size(p)),
            "per second",
            &series,
            &thr,
            true,
        )?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ratios_format() {
        assert_eq!(fmt_size(100), "100 B");
        assert_eq!(fmt_size(65536), "64 KiB");
        assert_eq!(fr(ratio(Some(3.0), Some(2.0))), "1.50x");
        assert_eq!(fr_lat(Some(0.25)), "0.25x (4.0x faster)");
        assert_eq!(fr(ratio(Some(1.0), None)), "n/a");
    }
}
