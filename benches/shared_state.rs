//! The state on PostgreSQL against the files, in one run: `auth token` with a cached token (files,
//! PostgreSQL, PostgreSQL with sealed tokens); 8 hosts × 20 accounts refreshing after each expiry
//! (token requests and wall time per round); the outbox drained by 1 daemon and by 4 daemons
//! (messages per second). PostgreSQL, Dovecot and Postfix are started as the tests start them.
//!
//! Run with `cargo bench --bench shared_state` (or `scripts/bench.sh shared_state`), as root.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::postgres::PgServer;
use support::{numbered_accounts, MailStack, OAuthServer, TestEnv};

const RUNS: usize = 100;

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Median and p90 of `RUNS` sequential `auth token work` processes.
fn token_times(env: &TestEnv, server: &OAuthServer) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        env.run_with_secret(server, &["auth", "token", "work"])
            .expect_code(0);
        times.push(started.elapsed());
    }
    times.sort();
    (times[RUNS / 2], times[RUNS * 9 / 10])
}

fn cached_token(pg: &PgServer) {
    let server = OAuthServer::start();
    let mut rows = Vec::new();
    for (name, state) in [
        ("files", None),
        ("postgres", Some("")),
        ("postgres, sealed", Some("key")),
    ] {
        let env = TestEnv::new();
        let mut extra = String::new();
        if let Some(kind) = state {
            extra = pg.state_config(
                &format!("bench_token_{}", rows.len()),
                &env.root().join("db-password"),
            );
            if kind == "key" {
                let key = env.key_file("state.key", 3);
                extra.push_str(&format!("key_file = \"{}\"\n", key.display()));
            }
        }
        env.config_for(&server, "");
        let account = std::fs::read_to_string(env.config_path()).expect("config");
        env.write_config(&format!("{extra}{account}"));
        if state.is_some() {
            env.run(&["state", "init"]).expect_code(0);
        }
        env.import(&server);
        env.run_with_secret(&server, &["auth", "token", "work"])
            .expect_code(0);
        let before = server.refresh_count();
        let (median, p90) = token_times(&env, &server);
        rows.push((name, median, p90, server.refresh_count() - before));
    }
    println!("auth token with a cached token, {RUNS} sequential processes each");
    println!(
        "{:<20} {:>10} {:>10} {:>16}",
        "state", "median ms", "p90 ms", "token requests"
    );
    for (name, median, p90, requests) in rows {
        println!(
            "{name:<20} {:>10} {:>10} {requests:>16}",
            ms(median),
            ms(p90)
        );
    }
}

/// 8 "hosts" × 20 accounts, every access token expired before each round.
fn eight_by_twenty(pg: &PgServer) {
    const HOSTS: usize = 8;
    const ACCOUNTS: usize = 20;
    let server = OAuthServer::start();
    server.set_rotation(true);
    let schema = "bench_eight";
    let first = TestEnv::new();
    let state = pg.state_config(schema, &first.root().join("db-password"));
    let text = numbered_accounts(&server, ACCOUNTS, &state);
    first.write_config(&text);
    first.run(&["state", "init"]).expect_code(0);
    for i in 0..ACCOUNTS {
        first.import_numbered(&server, i);
    }
    let hosts: Vec<TestEnv> = (0..HOSTS).map(|_| TestEnv::with_config(&text)).collect();
    let expire = format!(
        "UPDATE {schema}.tokens SET record = jsonb_set(record, '{{expires_at}}', to_jsonb(extract(epoch FROM now())::bigint - 1))"
    );
    println!("\n{HOSTS} hosts x {ACCOUNTS} accounts, all tokens expired before each round");
    println!(
        "{:<8} {:>16} {:>14} {:>10}",
        "round", "token requests", "wall ms", "processes"
    );
    for round in 1..=3 {
        pg.psql("mailpilot", &expire);
        let before = server.refresh_count();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for (w, env) in hosts.iter().enumerate() {
                let server = &server;
                scope.spawn(move || {
                    for k in 0..ACCOUNTS {
                        let account = format!("a{:02}", (k + w * 3) % ACCOUNTS);
                        env.run_with_secret(server, &["auth", "token", &account])
                            .expect_code(0);
                    }
                });
            }
        });
        println!(
            "{round:<8} {:>16} {:>14} {:>10}",
            server.refresh_count() - before,
            ms(started.elapsed()),
            HOSTS * ACCOUNTS
        );
    }
}

/// Seconds for `daemons` daemons to drain `count` messages from a fresh schema.
fn drain(stack: &MailStack, pg: &PgServer, daemons: usize, count: usize) -> Duration {
    let test = format!("benchdrain{daemons}");
    let (first, _user, rcpt) = TestEnv::for_sendmail(stack, &test, stack.ports.postfix_submission);
    let schema = format!("bench_drain_{daemons}");
    let state = pg.state_config(&schema, &first.root().join("db-password"));
    let text = format!(
        "{state}{}",
        std::fs::read_to_string(first.config_path()).expect("config")
    );
    first.write_config(&text);
    first.run(&["state", "init"]).expect_code(0);
    first
        .run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    pg.queue_messages(&schema, &rcpt, 1, count);
    let hosts: Vec<TestEnv> = (0..daemons).map(|_| TestEnv::with_config(&text)).collect();
    let started = Instant::now();
    let children: Vec<Child> = hosts
        .iter()
        .map(|env| {
            env.cmd(&["daemon"])
                .env("MP_TEST_SECRET", stack.oauth.client_secret())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("daemon")
        })
        .collect();
    pg.wait_outbox_empty(&schema, Duration::from_secs(600));
    let took = started.elapsed();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    took
}

fn main() {
    let pg = PgServer::shared();
    cached_token(pg);
    eight_by_twenty(pg);
    let stack = MailStack::get();
    const MESSAGES: usize = 2000;
    println!(
        "\noutbox in PostgreSQL, {MESSAGES} messages to Postfix submission (STARTTLS, XOAUTH2)"
    );
    println!("{:<10} {:>10} {:>14}", "daemons", "seconds", "messages/s");
    for daemons in [1, 4] {
        let took = drain(stack, pg, daemons, MESSAGES);
        println!(
            "{daemons:<10} {:>10.2} {:>14.0}",
            took.as_secs_f64(),
            MESSAGES as f64 / took.as_secs_f64()
        );
    }
}
