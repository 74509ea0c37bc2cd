//! What the benchmarks share: running a command measured (`measure.py`), the binary in a test
//! environment, medians, and keeping the servers up for profiling by hand.

#![allow(dead_code, reason = "each benchmark uses a different part")]

use std::process::Command;
use std::time::Duration;

use crate::support::TestEnv;

/// What one measured process cost.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall time.
    pub wall_ms: f64,
    /// User + system CPU.
    pub cpu_ms: f64,
    /// Peak resident memory.
    pub rss_kib: u64,
}

/// Runs `cmd` under `benches/measure.py` and returns its costs; panics (with its stderr) if it
/// failed.
pub fn measure(cmd: &mut Command) -> Sample {
    let out = cmd.output().expect("run measure.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("MEASURE "))
        .unwrap_or_else(|| panic!("no MEASURE line:\n{stderr}"));
    let f: Vec<f64> = line[8..]
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    assert!(f[3] == 0.0, "the measured command failed:\n{stderr}");
    Sample {
        wall_ms: f[0],
        cpu_ms: f[1],
        rss_kib: f[2] as u64,
    }
}

pub const MEASURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/measure.py");

/// `mailpilot args…` in `env`, measured.
pub fn mailpilot(env: &TestEnv, args: &[&str], secret: &str) -> Command {
    let cmd = env.cmd(&[]);
    let program = cmd.get_program().to_os_string();
    let mut measured = Command::new("python3");
    measured.env_clear().arg(MEASURE).arg(program).args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => measured.env(k, v),
            None => measured.env_remove(k),
        };
    }
    measured.env("MP_TEST_SECRET", secret);
    measured
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// With `MP_BENCH_KEEP=SECONDS`, the servers and the benchmark's environment stay up that long
/// (its paths printed), for profiling a command by hand.
pub fn keep_for_profiling(env: &TestEnv) {
    if let Some(wait) = std::env::var_os("MP_BENCH_KEEP") {
        eprintln!("environment in {}", env.root().display());
        let secs = wait.to_str().and_then(|s| s.parse().ok()).unwrap_or(600);
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// Which tables the command line asks for (`cargo bench --bench NAME -- TABLE…`): all when none
/// is named.
pub fn tables_wanted() -> impl Fn(&str) -> bool {
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    move |t: &str| picked.is_empty() || picked.iter().any(|p| p == t)
}
