//! `auth token` with a cached token vs. refreshing on every call (`--force`, what a hand-written
//! refresh POST in a cron script does), against the in-process test token server.
//!
//! Run with `cargo bench --bench auth_token` (or `scripts/bench.sh`). Prints, for each mode, the
//! median and p90 wall time per process and the token-endpoint requests per 100 runs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{OAuthServer, TestEnv};

const RUNS: usize = 100;

struct Figures {
    median: Duration,
    p90: Duration,
    requests: u64,
}

fn measure(env: &TestEnv, server: &OAuthServer, args: &[&str]) -> Figures {
    let before = server.refresh_count();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        env.run_with_secret(server, args).expect_code(0);
        times.push(started.elapsed());
    }
    times.sort();
    Figures {
        median: times[RUNS / 2],
        p90: times[RUNS * 9 / 10],
        requests: server.refresh_count() - before,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    // Warm the page cache and the binary once.
    env.run_with_secret(&server, &["auth", "token", "work"])
        .expect_code(0);

    let forced = measure(&env, &server, &["auth", "token", "work", "--force"]);
    let cached = measure(&env, &server, &["auth", "token", "work"]);

    println!("auth token, {RUNS} sequential processes each, local token server");
    println!(
        "{:<34} {:>10} {:>10} {:>22}",
        "mode", "median ms", "p90 ms", "token requests / 100"
    );
    for (name, f) in [
        ("baseline: refresh every call", &forced),
        ("mailpilot: cached token", &cached),
    ] {
        println!(
            "{name:<34} {:>10} {:>10} {:>22}",
            ms(f.median),
            ms(f.p90),
            f.requests * 100 / RUNS as u64
        );
    }
    assert_eq!(cached.requests, 0, "a cached token makes no request");
    assert_eq!(forced.requests, RUNS as u64, "--force refreshes every time");
}
