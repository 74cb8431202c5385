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

/// A system's four cells: writes/s, p50, p99, errors.
fn cells(r: &LevelResult) -> String {
    format!(
        "{:>11.1} {:>9.2} {:>9.2} {:>6}",
        r.throughput(),
        ms(r.latency.p50_us),
        ms(r.latency.p99_us),
        r.error_count()
    )
}

pub fn compare_row(o: &LevelResult, e: Option<&LevelResult>) {
    let ours = cells(o);
    let theirs = match e {
        Some(e) => etcd_cells(o, e),
        None => "(no etcd)".to_owned(),
    };
    println!("{:>5} | {ours} | {theirs}", o.concurrency);
}

/// etcd's cells of a row: its figures, then ours over its (throughput, p99).
fn etcd_cells(ours: &LevelResult, e: &LevelResult) -> String {
    format!("{} | {:>9.2} {:>9.2}", cells(e), ours.throughput_ratio(e), ours.p99_ratio(e))
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
        tls.throughput_ratio(insecure),
        tls.p99_ratio(insecure)
    );
}

/// The table of `throughput --tls --auth`: `vpnd`'s token and certificate
/// writers and etcd's authenticated one, the two ratios to etcd, then the
/// `admin` certificate's writer and what each principal costs over it.
pub fn auth_header() {
    println!();
    println!(
        "{:>5} | {:>11} {:>9} {:>9} {:>6} | {:>11} {:>9} {:>9} {:>6} | {:>11} {:>9} {:>9} {:>6} | {:>9} {:>9} | {:>11} {:>9} {:>6} | {:>9} {:>9}",
        "conc",
        "token w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "cert w/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "etcd-auth",
        "p50 ms",
        "p99 ms",
        "errs",
        "tok/etcd",
        "cert/etcd",
        "admin w/s",
        "p99 ms",
        "errs",
        "tok/adm",
        "cert/adm"
    );
    println!("{}", "-".repeat(203));
}

/// One level of [`auth_header`]'s table.
pub fn auth_row(token: &LevelResult, cert: &LevelResult, admin: &LevelResult, etcd: Option<&LevelResult>) {
    let theirs = match etcd {
        Some(e) => format!("{} | {:>9.2} {:>9.2}", cells(e), token.throughput_ratio(e), cert.throughput_ratio(e)),
        None => format!("{:>60}", "(no etcd)"),
    };
    println!(
        "{:>5} | {} | {} | {theirs} | {:>11.1} {:>9.2} {:>6} | {:>9.2} {:>9.2}",
        token.concurrency,
        cells(token),
        cells(cert),
        admin.throughput(),
        ms(admin.latency.p99_us),
        admin.error_count(),
        token.throughput_ratio(admin),
        cert.throughput_ratio(admin)
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
