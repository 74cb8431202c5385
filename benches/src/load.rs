//! The generator loop: `concurrency` workers issue writes with unique keys
//! until `max_ops` were issued or `duration` has passed, whichever comes
//! first. The same loop drives `vpnd` and etcd; only the [`Writer`] differs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One kind of write. `key` is unique for the whole run.
pub trait Writer: Send + Sync + 'static {
    /// Ok once the system acknowledged the write as committed.
    fn write(&self, worker: usize, key: String) -> impl Future<Output = Result<(), String>> + Send;
}

/// Bounds of one measured level.
#[derive(Clone, Debug)]
pub struct Level {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_ops: u64,
}

/// Latency percentiles of the acknowledged writes, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: u64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted here).
    pub fn from_samples(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return Self::default();
        }
        let pct = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            count: n,
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us: samples[n - 1],
            mean_us: samples.iter().sum::<u64>() / n as u64,
        }
    }
}

/// What one level measured.
#[derive(Clone, Debug)]
pub struct LevelResult {
    pub concurrency: usize,
    pub ok: u64,
    /// Failed writes by error message.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub latency: Latency,
}

impl LevelResult {
    /// Acknowledged writes per second of wall time.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// This level's writes/s over `other`'s: the throughput ratio of every report.
    pub fn throughput_ratio(&self, other: &LevelResult) -> f64 {
        self.throughput() / other.throughput().max(1e-9)
    }

    /// This level's p99 latency over `other`'s.
    pub fn p99_ratio(&self, other: &LevelResult) -> f64 {
        self.latency.p99_us as f64 / other.latency.p99_us.max(1) as f64
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.error_count(),
            "error_kinds": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "writes_per_s": self.throughput(),
            "latency_us": {
                "p50": self.latency.p50_us,
                "p90": self.latency.p90_us,
                "p99": self.latency.p99_us,
                "max": self.latency.max_us,
                "mean": self.latency.mean_us,
            },
        })
    }
}

/// Longest error message kept (they are grouped by text).
const MAX_ERROR_LEN: usize = 200;

/// Runs one level; keys are `{prefix}-c{concurrency}-{n}`.
pub async fn run_level<W: Writer>(writer: Arc<W>, prefix: &str, level: &Level) -> LevelResult {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(level.concurrency);
    for worker in 0..level.concurrency {
        let (writer, issued, level) = (writer.clone(), issued.clone(), level.clone());
        let prefix = format!("{prefix}-c{}", level.concurrency);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= level.max_ops || start.elapsed() >= level.duration {
                    break;
                }
                let sent = Instant::now();
                match writer.write(worker, format!("{prefix}-{n}")).await {
                    Ok(()) => samples.push(sent.elapsed().as_micros() as u64),
                    Err(mut e) => {
                        e.truncate(MAX_ERROR_LEN);
                        *errors.entry(e).or_default() += 1;
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        match task.await {
            Ok((s, e)) => {
                samples.extend(s);
                for (k, v) in e {
                    *errors.entry(k).or_default() += v;
                }
            }
            Err(e) => *errors.entry(format!("worker task failed: {e}")).or_default() += 1,
        }
    }
    let elapsed = start.elapsed();
    LevelResult {
        concurrency: level.concurrency,
        ok: samples.len() as u64,
        errors,
        elapsed,
        latency: Latency::from_samples(samples),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::from_samples((1..=100).rev().collect());
        assert_eq!((l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us), (50, 90, 99, 100, 50));
        assert_eq!(Latency::from_samples(vec![7]).p99_us, 7);
        assert_eq!(Latency::from_samples(Vec::new()).count, 0);
    }

    struct Counting(AtomicU64);

    impl Writer for Counting {
        async fn write(&self, _worker: usize, key: String) -> Result<(), String> {
            if self.0.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
                return Err(format!("refused {}", key.len()));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_level_stops_at_max_ops() {
        let w = Arc::new(Counting(AtomicU64::new(0)));
        let level = Level { concurrency: 4, duration: Duration::from_secs(10), max_ops: 100 };
        let r = run_level(w, "t", &level).await;
        assert_eq!(r.ok + r.error_count(), 100);
        assert_eq!(r.error_count(), 10);
    }
}
