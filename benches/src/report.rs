//! Human-readable tables on stdout (the JSON file carries the same figures).

use std::path::Path;

use crate::load::LevelResult;

pub fn compare_header() {
    println!();
    println!(
        "{:>5} | {:>11} {:>9} {:>9} {:>6} | {:>11} {:>9} {:>9} {:>6} | {:>9} {:>9}",
        "conc",
        "vpnd w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "etcd w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "w/s ratio",
        "p99 ratio"
    );
    println!("{}", "-".repeat(118));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn compare_row(o: &LevelResult, e: Option<&LevelResult>) {
    let ours = format!(
        "{:>11.1} {:>9.2} {:>9.2} {:>6}",
        o.throughput(),
        ms(o.latency.p50_us),
        ms(o.latency.p99_us),
        o.error_count()
    );
    let theirs = match e {
        Some(e) => etcd_cells(o, e),
        None => "(no etcd)".to_owned(),
    };
    println!("{:>5} | {ours} | {theirs}", o.concurrency);
}

/// etcd's cells of a row: its figures, then ours over its (throughput, p99).
fn etcd_cells(ours: &LevelResult, e: &LevelResult) -> String {
    format!(
        "{:>11.1} {:>9.2} {:>9.2} {:>6} | {:>9.2} {:>9.2}",
        e.throughput(),
        ms(e.latency.p50_us),
        ms(e.latency.p99_us),
        e.error_count(),
        ours.throughput() / e.throughput().max(1e-9),
        ours.latency.p99_us as f64 / e.latency.p99_us.max(1) as f64
    )
}

/// The table of `throughput --tls`: `vpnd` and etcd both under mutual TLS,
/// then `vpnd`'s own `--insecure` run and what TLS costs it.
pub fn tls_header() {
    println!();
    println!(
        "{:>5} | {:>11} {:>9} {:>9} {:>6} | {:>11} {:>9} {:>9} {:>6} | {:>9} {:>9} | {:>11} {:>9} {:>6} | {:>9} {:>9}",
        "conc",
        "vpnd-tls w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "etcd-tls w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "w/s ratio",
        "p99 ratio",
        "insecure w/s",
        "p99 ms",
        "errs",
        "tls/insec",
        "p99 t/i"
    );
    println!("{}", "-".repeat(172));
}

/// One level of [`tls_header`]'s table.
pub fn tls_row(tls: &LevelResult, etcd: Option<&LevelResult>, insecure: &LevelResult) {
    let theirs = match etcd {
        Some(e) => etcd_cells(tls, e),
        None => format!("{:>63}", "(no etcd)"),
    };
    println!(
        "{:>5} | {:>11.1} {:>9.2} {:>9.2} {:>6} | {theirs} | {:>11.1} {:>9.2} {:>6} | {:>9.2} {:>9.2}",
        tls.concurrency,
        tls.throughput(),
        ms(tls.latency.p50_us),
        ms(tls.latency.p99_us),
        tls.error_count(),
        insecure.throughput(),
        ms(insecure.latency.p99_us),
        insecure.error_count(),
        tls.throughput() / insecure.throughput().max(1e-9),
        tls.latency.p99_us as f64 / insecure.latency.p99_us.max(1) as f64
    );
}

/// Prints the error kinds of a level, if any.
pub fn warn_errors(what: &str, r: &LevelResult) {
    for (msg, n) in &r.errors {
        eprintln!("loadgen: {what} c={}: {n} x {msg}", r.concurrency);
    }
}

/// Lines of a node log that look like warnings or errors (tracing's levels).
pub fn log_problems(path: &Path) -> (usize, usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut warns, mut errors, mut samples) = (0, 0, Vec::new());
    for line in text.lines() {
        let is_err = line.contains("ERROR") || line.contains("panicked");
        let is_warn = line.contains("WARN");
        if is_err {
            errors += 1;
        } else if is_warn {
            warns += 1;
        }
        if (is_err || is_warn) && samples.len() < 10 {
            samples.push(line.chars().take(400).collect());
        }
    }
    (warns, errors, samples)
}
