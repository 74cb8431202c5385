//! Reads criterion's saved estimates (`target/criterion/**/new/`) and prints
//! each bench next to the baselines of its group, as ratios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

#[derive(Debug)]
struct Bench {
    group: String,
    function: String,
    param: String,
    /// Median time per iteration, ns.
    median_ns: f64,
    /// Elements per iteration, when the bench declared a throughput.
    elements: Option<f64>,
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.ends_with("new") && p.join("estimates.json").is_file() {
            out.push(p);
        } else if p.is_dir() && depth < 6 {
            collect(&p, out, depth + 1);
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn load(dir: &Path) -> Result<Vec<Bench>> {
    let mut paths = Vec::new();
    collect(dir, &mut paths, 0);
    let mut out = Vec::new();
    for p in paths {
        let meta = read_json(&p.join("benchmark.json"))?;
        let est = read_json(&p.join("estimates.json"))?;
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        out.push(Bench {
            group: s(&meta["group_id"]),
            function: s(&meta["function_id"]),
            param: s(&meta["value_str"]),
            median_ns: est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN),
            elements: meta["throughput"]["Elements"].as_f64(),
        });
    }
    out.sort_by(|a, b| (&a.group, &a.param, &a.function).cmp(&(&b.group, &b.param, &b.function)));
    Ok(out)
}

fn human(ns: f64) -> String {
    match ns {
        n if n >= 1e6 => format!("{:.3} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.3} us", n / 1e3),
        n => format!("{n:.1} ns"),
    }
}

/// Prints the table; returns the same as JSON.
pub fn summarize(dir: &Path) -> Result<Value> {
    let benches = load(dir)?;
    let mut rows = Vec::new();
    println!(
        "{:<26} {:<34} {:>6} {:>12} {:>14}  ratios to baselines",
        "group", "bench", "param", "median", "per element"
    );
    for b in &benches {
        let per_el = b.elements.map(|n| human(b.median_ns / n)).unwrap_or_default();
        let mut ratios = BTreeMap::new();
        if !b.function.starts_with("baseline") {
            for base in benches
                .iter()
                .filter(|x| x.group == b.group && x.param == b.param && x.function.starts_with("baseline"))
            {
                ratios.insert(base.function.clone(), b.median_ns / base.median_ns);
            }
        }
        let ratio_text: Vec<String> = ratios.iter().map(|(k, v)| format!("{v:.2}x {k}")).collect();
        println!(
            "{:<26} {:<34} {:>6} {:>12} {:>14}  {}",
            b.group,
            b.function,
            b.param,
            human(b.median_ns),
            per_el,
            ratio_text.join(", ")
        );
        rows.push(json!({
            "group": b.group, "bench": b.function, "param": b.param,
            "median_ns": b.median_ns, "elements": b.elements, "ratio_to_baselines": ratios,
        }));
    }
    Ok(Value::Array(rows))
}
