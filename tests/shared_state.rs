//! `[state] backend = "postgres"` against a real PostgreSQL (Debian's, started by the suite): the
//! schema and its commands, grants shared by "hosts" (separate local directories) with one refresh
//! per expiry, outages and refusals with the right exit codes, migration both ways, and sealing.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::postgres::PgServer;
use crate::support::{numbered_accounts, stop_daemon, Fault, MailStack, OAuthServer, TestEnv};

/// A schema name unique to `test` in this run (tests share one server).
fn schema(test: &str) -> String {
    format!("t_{test}_{}", std::process::id())
}

/// `state init`, then the server's own view: the tables exist in the schema.
#[test]
fn init_creates_and_upgrades_once() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let name = schema("init");
    let env = TestEnv::new();
    let state = pg.state_config(&name, &env.root().join("db-password"));
    env.write_config(&numbered_accounts(&server, 1, &state));
    // Before init: a clear error naming the command, exit 1.
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("holds no mailpilot tables")
            && run.stderr.contains("mailpilot state init"),
        "{}",
        run.stderr
    );
    let first = env.run(&["state", "init"]);
    first.expect_code(0);
    let latest = first
        .stdout
        .trim()
        .rsplit("version 0 -> ")
        .next()
        .expect("version")
        .to_string();
    assert!(
        first.stdout.contains("version 0 -> ") && latest.parse::<u32>().is_ok(),
        "{}",
        first.stdout
    );
    let again = env.run(&["state", "init"]);
    again.expect_code(0);
    assert!(
        again
            .stdout
            .contains(&format!("already at version {latest}")),
        "{}",
        again.stdout
    );
    let tables = pg.psql(
        "mailpilot",
        &format!("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = '{name}'"),
    );
    assert_eq!(
        tables.trim(),
        "auth_metadata,journal,outbox,records,schema_migrations,token_errors,tokens"
    );
    // A newer mailpilot upgraded the schema: this one neither writes into it nor "upgrades" it.
    let newer = latest.parse::<u32>().expect("version") + 1;
    pg.psql(
        "mailpilot",
        &format!("INSERT INTO {name}.schema_migrations (version) VALUES ({newer})"),
    );
    for args in [&["auth", "token", "a00"][..], &["state", "init"]] {
        let run = env.run_with_secret(&server, args);
        run.expect_code(1);
        assert!(
            run.stderr.contains(&format!(
                "is at version {newer}, written by a newer mailpilot"
            )) && run.stderr.contains("upgrade mailpilot on this host"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// A schema named by a reserved word (`user`) works: the name is quoted wherever it reaches SQL.
#[test]
fn reserved_word_schema() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let state = pg.state_config("user", &env.root().join("db-password"));
    env.write_config(&numbered_accounts(&server, 1, &state));
    env.run(&["state", "init"]).expect_code(0);
    env.import_numbered(&server, 0);
    let token = env.run_with_secret(&server, &["auth", "token", "a00"]);
    token.expect_code(0);
    assert_eq!(
        token.stdout.trim(),
        server.last_access_token().expect("issued")
    );
    let rows = pg.psql("mailpilot", "SELECT count(*) FROM \"user\".tokens");
    assert_eq!(rows.trim(), "1");
    env.run(&["state", "check"]).expect_code(0);
}

/// A grant imported on one host is used on another with an empty disk; nothing is written to
/// either host's files; `state check` opens it; `auth status` and `config check` name the database.
#[test]
fn grant_shared_between_hosts() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let a = TestEnv::new();
    let state = pg.state_config(&schema("shared"), &a.root().join("db-password"));
    let text = numbered_accounts(&server, 1, &state);
    a.write_config(&text);
    a.run(&["state", "init"]).expect_code(0);
    a.import_numbered(&server, 0);
    let b = TestEnv::with_config(&text);
    let token = b.run_with_secret(&server, &["auth", "token", "a00"]);
    token.expect_code(0);
    assert_eq!(
        token.stdout.trim(),
        server.last_access_token().expect("issued")
    );
    for env in [&a, &b] {
        assert!(
            !env.state_dir().join("tokens").join("a00.json").exists(),
            "no token file on a host using the database"
        );
    }
    let check = b.run(&["state", "check"]);
    check.expect_code(0);
    assert!(
        check.stdout.contains("state database 127.0.0.1:")
            && check.stdout.contains("a00: grant opens (plain)"),
        "{}",
        check.stdout
    );
    let config = b.run(&["config", "check"]);
    config.expect_code(0);
    assert!(
        config.stdout.contains(&format!(
            "state:  PostgreSQL 127.0.0.1:{}/mailpilot",
            pg.port
        )),
        "{}",
        config.stdout
    );
}

/// The database down is transient (75) and nothing falls back to files; a wrong or missing
/// password needs a person (77); nothing shows the password.
#[test]
fn outage_and_refused_login() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let password_file = env.root().join("db-password");
    let state = pg.state_config(&schema("outage"), &password_file);
    env.write_config(&numbered_accounts(&server, 1, &state));
    env.run(&["state", "init"]).expect_code(0);
    env.import_numbered(&server, 0);
    // Nothing listens on the port any more.
    let closed = crate::support::mailstack::free_port();
    env.write_config(&numbered_accounts(
        &server,
        1,
        &state.replace(&format!(":{}/", pg.port), &format!(":{closed}/")),
    ));
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(75);
    assert!(
        run.stderr.contains(&format!(
            "the state database 127.0.0.1:{closed}/mailpilot is unavailable"
        )) && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
    assert!(
        !env.state_dir().join("tokens").exists(),
        "no fall back to files"
    );
    // The right port, the wrong password.
    env.write_config(&numbered_accounts(&server, 1, &state));
    std::fs::write(&password_file, "not-the-password").expect("write");
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(77);
    assert!(
        run.stderr.contains("refused the login") && !run.stderr.contains("not-the-password"),
        "{}",
        run.stderr
    );
    // No password configured while the server asks for one: the same, naming the settings.
    let without: String = state
        .lines()
        .filter(|l| !l.starts_with("password_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    env.write_config(&numbered_accounts(&server, 1, &without));
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(77);
    assert!(
        run.stderr.contains("password missing") && run.stderr.contains("password_env"),
        "{}",
        run.stderr
    );
}

/// Files → PostgreSQL → files: the grants arrive unchanged (sealed ones still sealed), with the
/// poll checkpoints, job outcomes, journal entries and queued messages; a second run copies
/// nothing; a grant refreshed in the target since is not overwritten by an older copy; a message
/// moves (it is never in both outboxes).
#[test]
fn migrate_round_trip() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let key = env.key_file("state.key", 7);
    let key_line = format!("key_file = \"{}\"\n", key.display());
    // On files first, two grants (sealed).
    env.write_config(&numbered_accounts(
        &server,
        2,
        &format!("[state]\n{key_line}"),
    ));
    env.import_numbered(&server, 0);
    env.import_numbered(&server, 1);
    let files_before: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(env.token_file(&format!("a{i:02}"))).expect("read"))
        .collect();
    // The rest of the state, as earlier runs on files left it.
    let state_dir = env.state_dir();
    for (path, text) in [
        ("poll/a00/INBOX.json", r#"{"version":1,"uidvalidity":7,"last_uid":42}"#.to_string()),
        ("jobs/nightly.json", r#"{"version":1,"started":100,"ended":101,"exit_code":0,"error":null}"#.to_string()),
        ("journal/b1.jsonl", "{\"key\":\"k1\",\"row\":\"r.csv:2\",\"message_id\":\"<k1@x>\",\"at\":1,\"status\":\"sent\",\"reply\":\"250 ok\"}\n".to_string()),
        ("outbox/000000000000000000000001-1-0.mail", "{\"version\":1,\"account\":\"a00\",\"from\":\"\",\"to\":[\"x@example.com\"],\"queued_at\":1}\nSubject: queued\r\n\r\nwaiting\r\n".to_string()),
    ] {
        let path = state_dir.join(path);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    // Then the database.
    let state = pg.state_config(&schema("migrate"), &env.root().join("db-password"));
    env.write_config(&numbered_accounts(
        &server,
        2,
        &format!("{state}{key_line}"),
    ));
    env.run(&["state", "init"]).expect_code(0);
    let run = env.run(&["state", "migrate", "--from", "files", "--to", "postgres"]);
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("grants: 2 copied, 0 already there, 0 kept newer; 1 poll checkpoints, 1 job outcomes, 1 journal entries copied; 1 messages moved"),
        "{}",
        run.stdout
    );
    assert!(!state_dir
        .join("outbox/000000000000000000000001-1-0.mail")
        .exists());
    let queue = env.run(&["queue", "list", "--json"]);
    assert!(
        queue.stdout.contains("000000000000000000000001-1-0"),
        "{}",
        queue.stdout
    );
    let status = env.run(&["status", "--json"]);
    assert!(status.stdout.contains("\"queued\":1"), "{}", status.stdout);
    let job = pg.psql(
        "mailpilot",
        &format!(
            "SELECT record->>'started' FROM {}.records WHERE kind = 'job' AND key = 'nightly'",
            schema("migrate")
        ),
    );
    assert_eq!(job.trim(), "100");
    let again = env.run(&["state", "migrate", "--from", "files", "--to", "postgres"]);
    assert!(
        again.stdout.starts_with("grants: 0 copied, 2 already there, 0 kept newer; 0 poll checkpoints, 0 job outcomes, 0 journal entries copied; 0 messages moved"),
        "{}",
        again.stdout
    );
    let checkpoint = pg.psql(
        "mailpilot",
        &format!(
            "SELECT record->>'last_uid' FROM {}.records WHERE kind = 'poll' AND key = 'a00/INBOX'",
            schema("migrate")
        ),
    );
    assert_eq!(checkpoint.trim(), "42");
    // The database holds them sealed and they open there.
    let dump = pg.dump();
    for i in 0..2 {
        let rt = server.live_refresh_tokens();
        for token in &rt {
            assert!(
                !dump.contains(token.as_str()),
                "refresh token {i} in clear in the dump"
            );
        }
    }
    // Timestamps are whole seconds: make this refresh later than the copy.
    std::thread::sleep(Duration::from_millis(1100));
    env.run_with_secret(&server, &["auth", "token", "a00", "--force"])
        .expect_code(0);
    // Back to (fresh) files: a00 was refreshed in the database, so its file copy is older.
    let back = env.run(&["state", "migrate", "--from", "postgres", "--to", "files"]);
    back.expect_code(0);
    assert!(
        back.stdout.starts_with("grants: 1 copied, 1 already there, 0 kept newer; 0 poll checkpoints, 0 job outcomes, 0 journal entries copied; 1 messages moved"),
        "{}",
        back.stdout
    );
    assert!(state_dir
        .join("outbox/000000000000000000000001-1-0.mail")
        .exists());
    let a01 = std::fs::read_to_string(env.token_file("a01")).expect("read");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&a01).expect("json"),
        serde_json::from_str::<serde_json::Value>(&files_before[1]).expect("json")
    );
    // An older grant never replaces a newer one: files now hold a00's newest; make the database's
    // copy older by refreshing on files, then copy files → database → the newer one wins.
    env.write_config(&numbered_accounts(
        &server,
        2,
        &format!("[state]\n{key_line}"),
    ));
    std::thread::sleep(Duration::from_millis(1100));
    env.run_with_secret(&server, &["auth", "token", "a00", "--force"])
        .expect_code(0);
    let newest = server.last_access_token().expect("issued");
    env.write_config(&numbered_accounts(
        &server,
        2,
        &format!("{state}{key_line}"),
    ));
    let stale = env.run(&["state", "migrate", "--from", "postgres", "--to", "files"]);
    assert!(
        stale
            .stdout
            .starts_with("grants: 0 copied, 1 already there, 1 kept newer"),
        "{}",
        stale.stdout
    );
    env.run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    let token = env.run_with_secret(&server, &["auth", "token", "a00"]);
    assert_eq!(token.stdout.trim(), newest);
}

/// With `key_file`, neither the database dump nor the hosts' files hold any token in clear; without
/// the key it is exit 77 with the row untouched; `state rotate-key` re-seals the rows.
#[test]
fn sealed_in_database() {
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let key = env.key_file("state.key", 9);
    let state = pg.state_config(&schema("sealed"), &env.root().join("db-password"));
    env.write_config(&numbered_accounts(
        &server,
        3,
        &format!("{state}key_file = \"{}\"\n", key.display()),
    ));
    env.run(&["state", "init"]).expect_code(0);
    for i in 0..3 {
        env.import_numbered(&server, i);
        env.run_with_secret(&server, &["auth", "token", &format!("a{i:02}")])
            .expect_code(0);
    }
    let dump = pg.dump();
    let secrets = server.all_secrets();
    assert!(secrets.len() >= 6, "{secrets:?}");
    for secret in &secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "a token in clear in the dump"
        );
    }
    assert!(dump.contains("seal1:"), "sealed records are in the dump");
    let check = env.run(&["state", "check"]);
    check.expect_code(0);
    assert!(
        check.stdout.contains("a02: grant opens (sealed)"),
        "{}",
        check.stdout
    );
    // Without the key: 77, and the row is untouched.
    env.write_config(&numbered_accounts(&server, 3, &state));
    let before = pg.psql(
        "mailpilot",
        &format!(
            "SELECT record::text FROM {}.tokens WHERE account = 'a00'",
            schema("sealed")
        ),
    );
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(77);
    let after = pg.psql(
        "mailpilot",
        &format!(
            "SELECT record::text FROM {}.tokens WHERE account = 'a00'",
            schema("sealed")
        ),
    );
    assert_eq!(before, after);
    // rotate-key re-seals the rows under a new key, which then opens them.
    let new_key = env.key_file("new.key", 10);
    env.write_config(&numbered_accounts(
        &server,
        3,
        &format!("{state}key_file = \"{}\"\n", key.display()),
    ));
    env.run(&["state", "rotate-key", new_key.to_str().expect("utf8")])
        .expect_code(0);
    env.write_config(&numbered_accounts(
        &server,
        3,
        &format!("{state}key_file = \"{}\"\n", new_key.display()),
    ));
    let token = env.run_with_secret(&server, &["auth", "token", "a01"]);
    token.expect_code(0);
    assert!(
        !pg.dump().contains(token.stdout.trim()),
        "re-sealed, not in clear"
    );
}

/// Pseudo-random bits for kill trial `trial` of this run.
fn seed(trial: usize) -> u64 {
    let mut x =
        (trial as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// One worker "host": runs `auth token` for every account in its own order, killable.
struct Worker {
    env: TestEnv,
    /// The `mailpilot` process running now, so a test can kill it.
    current: Arc<Mutex<Option<Child>>>,
}

impl Worker {
    fn command(&self, server: &OAuthServer, account: &str) -> Command {
        let mut cmd = self.env.cmd(&["auth", "token", account]);
        cmd.env("MP_TEST_SECRET", server.client_secret())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Runs one round: every worker asks for every account's token (starting at a different
/// account). Returns the failures, `(worker, account, exit code, stderr)`; a killed process is
/// not a failure.
fn round(workers: &[Worker], server: &OAuthServer, accounts: usize) -> Vec<String> {
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for (w, worker) in workers.iter().enumerate() {
            let failures = failures.clone();
            scope.spawn(move || {
                for k in 0..accounts {
                    let account = format!("a{:02}", (k + w * 3) % accounts);
                    let child = worker
                        .command(server, &account)
                        .spawn()
                        .expect("spawn mailpilot");
                    *worker.current.lock().expect("lock") = Some(child);
                    // Wait without holding the lock, so the test can kill the child meanwhile.
                    let out = loop {
                        let mut slot = worker.current.lock().expect("lock");
                        let child = slot.as_mut().expect("child");
                        if let Some(status) = child.try_wait().expect("wait") {
                            let child = slot.take().expect("child");
                            break (status, child.wait_with_output().expect("output"));
                        }
                        drop(slot);
                        std::thread::sleep(Duration::from_millis(2));
                    };
                    let (status, output) = out;
                    use std::os::unix::process::ExitStatusExt;
                    if status.signal() == Some(9) {
                        continue;
                    }
                    if !status.success() {
                        failures.lock().expect("lock").push(format!(
                            "worker {w} {account}: {status}: {}",
                            String::from_utf8_lossy(&output.stderr)
                        ));
                    }
                }
            });
        }
    });
    Arc::try_unwrap(failures)
        .expect("threads done")
        .into_inner()
        .expect("lock")
}

/// 8 worker processes on 8 "hosts" × 20 accounts, refresh tokens rotating, every access token
/// expired before each round (its `expires_at` set in the past): exactly 20 tokens issued per
/// expiry round. Then 10 rounds in which random
/// workers are killed (`kill -9`) while their refresh requests are in flight: every account still
/// works on every host afterwards and no rotated refresh token was ever reused.
#[test]
fn eight_hosts_one_refresh_per_expiry() {
    const HOSTS: usize = 8;
    const ACCOUNTS: usize = 20;
    let pg = PgServer::shared();
    let server = OAuthServer::start();
    server.set_rotation(true);
    let first = TestEnv::new();
    let state = pg.state_config(&schema("eight"), &first.root().join("db-password"));
    let text = numbered_accounts(&server, ACCOUNTS, &state);
    first.write_config(&text);
    first.run(&["state", "init"]).expect_code(0);
    for i in 0..ACCOUNTS {
        first.import_numbered(&server, i);
    }
    let workers: Vec<Worker> = (0..HOSTS)
        .map(|_| Worker {
            env: TestEnv::with_config(&text),
            current: Arc::new(Mutex::new(None)),
        })
        .collect();
    let name = schema("eight");
    let expire = format!(
        "UPDATE {name}.tokens SET record = jsonb_set(record, '{{expires_at}}', to_jsonb(extract(epoch FROM now())::bigint - 1))"
    );
    let mut figures = BTreeMap::new();
    for trial in 0..13 {
        let killing = trial >= 3;
        pg.psql("mailpilot", &expire);
        let issued = server.issued_count();
        let requests = server.refresh_count();
        if killing {
            server.set_fault(Fault::Stall(Duration::from_millis(250)));
        }
        let started = Instant::now();
        let killer = killing.then(|| {
            let victims: Vec<_> = workers
                .iter()
                .enumerate()
                // About half the workers, chosen anew each trial: at the moment of the kill at
                // least two requests are held by the server, so a victim is almost surely among
                // their senders (a trial misses both with odds near 1/4).
                .filter(|(w, _)| (seed(trial) >> w) & 1 == 1)
                .map(|(_, worker)| worker.current.clone())
                .collect();
            let before = server.refresh_count();
            let server = &server;
            move || {
                // Kill while refresh requests are held by the server (in flight) and none of
                // this round has been answered yet: a process killed between the server's
                // answer and its commit (about a millisecond) would lose its rotated grant, the
                // window no client can close, which this test is not about.
                let deadline = Instant::now() + Duration::from_secs(10);
                while server.refresh_count() < before + 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if server.issued_count() != issued {
                    return;
                }
                for victim in victims {
                    if let Some(child) = victim.lock().expect("lock").as_mut() {
                        let _ = child.kill();
                    }
                }
            }
        });
        let failures = std::thread::scope(|scope| {
            if let Some(kill) = killer {
                scope.spawn(kill);
            }
            round(&workers, &server, ACCOUNTS)
        });
        server.set_fault(Fault::None);
        let elapsed = started.elapsed();
        assert!(failures.is_empty(), "trial {trial}: {failures:#?}");
        if killing {
            // Accounts whose refresh died with its process are refreshed by a survivor or now.
            let after = round(&workers[..1], &server, ACCOUNTS);
            assert!(after.is_empty(), "trial {trial}: {after:#?}");
        }
        let issued = server.issued_count() - issued;
        assert_eq!(
            issued, ACCOUNTS,
            "trial {trial}: tokens issued in one expiry round"
        );
        figures.insert(
            trial,
            (server.refresh_count() - requests, elapsed.as_millis()),
        );
    }
    assert_eq!(
        server.refused_refreshes(),
        0,
        "a rotated refresh token was reused"
    );
    // The kills did land on refreshes in flight (each such request was dropped unprocessed).
    let killed_in_flight: u64 = figures
        .iter()
        .filter(|(trial, _)| **trial >= 3)
        .map(|(_, (requests, _))| requests - ACCOUNTS as u64)
        .sum();
    assert!(
        killed_in_flight >= 2,
        "only {killed_in_flight} refreshes were in flight when their process was killed"
    );
    // Every account works on every host afterwards.
    let failures = round(&workers, &server, ACCOUNTS);
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("8 hosts x 20 accounts, per trial (token requests, ms): {figures:?}");
}

/// Message-ID → how many copies `user` received.
fn copies(stack: &MailStack, user: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for message in stack.delivered(user) {
        let text = String::from_utf8_lossy(&message);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or("none")
            .to_string();
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// Waits until `user` holds `n` distinct Message-IDs or `limit` passes, then until no more
/// messages arrive for a second (a resent copy may still be on its way); returns the copies.
fn wait_for_distinct(
    stack: &MailStack,
    user: &str,
    n: usize,
    limit: Duration,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + limit;
    while copies(stack, user).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut seen = stack.delivered_count(user);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = stack.delivered_count(user);
        if now == seen {
            return copies(stack, user);
        }
        seen = now;
    }
}

/// Postfix's log lines about deliveries that did not (yet) succeed, for a failure message.
fn not_delivered_lines(stack: &MailStack) -> String {
    stack
        .postfix_log()
        .lines()
        .filter(|l| l.contains("status=") && !l.contains("status=sent"))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `user` holds `n` messages or `limit` passes.
fn wait_for_mail(stack: &MailStack, user: &str, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let have = stack.delivered_count(user);
        if have >= n || Instant::now() > deadline {
            return have;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 4 daemons on 4 "hosts" drain one outbox in PostgreSQL: 1,000 messages each delivered exactly
/// once; then 1,000 more with PostgreSQL stopped and started again in the middle: none lost, the
/// daemons carry on, and a message whose deletion the outage interrupted is sent again with the
/// same Message-ID (at most one per daemon).
#[test]
fn four_daemons_drain_one_outbox() {
    const DAEMONS: usize = 4;
    let stack = MailStack::get();
    let pg = PgServer::start();
    let (first, _user, rcpt) =
        TestEnv::for_sendmail(stack, "pgdrain", stack.ports.postfix_submission);
    let state = pg.state_config("drain", &first.root().join("db-password"));
    let text = format!(
        "{state}{}",
        std::fs::read_to_string(first.config_path()).expect("config")
    );
    first.write_config(&text);
    first.run(&["state", "init"]).expect_code(0);
    first
        .run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    pg.queue_messages("drain", &rcpt, 1, 1000);
    let hosts: Vec<TestEnv> = (0..DAEMONS).map(|_| TestEnv::with_config(&text)).collect();
    let started = Instant::now();
    let mut daemons: Vec<Child> = hosts
        .iter()
        .map(|env| env.spawn_with_secret(&stack.oauth, &["daemon"]))
        .collect();
    let have = wait_for_mail(stack, &rcpt, 1000, Duration::from_secs(120));
    let first_phase = started.elapsed();
    assert_eq!(have, 1000, "delivered after {first_phase:?}");
    let counted = copies(stack, &rcpt);
    assert_eq!(counted.len(), 1000);
    assert!(
        counted.values().all(|n| *n == 1),
        "a message was delivered twice"
    );
    // Phase two: an outage in the middle.
    pg.queue_messages("drain", &rcpt, 1001, 1000);
    wait_for_mail(stack, &rcpt, 1300, Duration::from_secs(60));
    pg.stop();
    std::thread::sleep(Duration::from_secs(2));
    pg.resume();
    pg.wait_outbox_empty("drain", Duration::from_secs(120));
    // The outbox is empty once Postfix has answered 250 for every message; its delivery into the
    // mailbox is asynchronous and lags under load, so wait for all of them, then for stragglers.
    let counted = wait_for_distinct(stack, &rcpt, 2000, Duration::from_secs(120));
    assert_eq!(
        counted.len(),
        2000,
        "every message arrived; Postfix on the missing ones:\n{}",
        not_delivered_lines(stack)
    );
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.len() <= DAEMONS && twice.iter().all(|(_, n)| **n == 2),
        "resent after the outage: {twice:?}"
    );
    for daemon in &mut daemons {
        assert!(
            daemon.try_wait().expect("wait").is_none(),
            "a daemon stopped"
        );
    }
    // The queue was shared, not drained by one daemon while the others idled. (A drain cut off by
    // the outage reports nothing, so the sum is short of 2,000; the first 1,000 are all counted.)
    let sent_by: Vec<usize> = daemons
        .into_iter()
        .map(|daemon| {
            stop_daemon(daemon)
                .lines()
                .filter_map(|l| l.split("outbox, account \"work\": ").nth(1))
                .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
                .sum()
        })
        .collect();
    assert!(
        sent_by.iter().sum::<usize>() >= 1000 && sent_by.iter().filter(|n| **n > 0).count() >= 2,
        "messages sent per daemon: {sent_by:?}"
    );
    eprintln!(
        "4 daemons: 1000 messages in {first_phase:?}; after the outage {} resent; sent per daemon {sent_by:?}",
        twice.len()
    );
}

/// A stack account whose grant moved into schema `name` of the shared PostgreSQL, with `extra`
/// (jobs) in its config; returns the first host, the config text, the user and a recipient.
fn stack_host(
    stack: &MailStack,
    pg: &PgServer,
    test: &str,
    extra: &str,
) -> (TestEnv, String, String, String) {
    let (env, user) = TestEnv::for_mailbox(stack, test);
    env.import_for(&stack.oauth, &user);
    let rcpt = stack.user(&format!("{test}-rcpt"));
    let state = pg.state_config(&schema(test), &env.root().join("db-password"));
    let text = format!(
        "{state}{}\n{}",
        std::fs::read_to_string(env.config_path()).expect("config"),
        extra.replace("RCPT", &rcpt)
    );
    env.write_config(&text);
    env.run(&["state", "init"]).expect_code(0);
    env.run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    (env, text, user, rcpt)
}

/// The merge template and `rows` rows to `rcpt` in each of `hosts`.
fn merge_files(hosts: &[&TestEnv], rcpt: &str, rows: usize) {
    const TEMPLATE: &str = "{% block subject %}Row {{ n }}{% endblock %}\n{% block text %}\nHello {{ n }}.\n{% endblock %}\n";
    let mut csv = String::from("id,to,n\n");
    for i in 1..=rows {
        csv.push_str(&format!("r{i},{rcpt},{i}\n"));
    }
    for env in hosts {
        let dir = env.config_path().parent().expect("dir").join("templates");
        std::fs::create_dir_all(&dir).expect("templates");
        std::fs::write(dir.join("merge.j2"), TEMPLATE).expect("template");
        std::fs::write(env.root().join("rows.csv"), &csv).expect("rows");
    }
}

/// The merge of `merge_files` as batch `december-report`.
fn merge_cmd(env: &TestEnv, stack: &MailStack) -> Command {
    let mut cmd = env.cmd(&[
        "send",
        "-t",
        "merge",
        "--each",
        env.root().join("rows.csv").to_str().expect("utf8"),
        "--batch",
        "december-report",
    ]);
    cmd.env("MP_TEST_SECRET", stack.oauth.client_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Rows in the journal table of `schema`.
fn journal_rows(pg: &PgServer, schema: &str) -> usize {
    pg.psql(
        "mailpilot",
        &format!("SELECT count(*) FROM {schema}.journal"),
    )
    .trim()
    .parse()
    .expect("count")
}

/// PostgreSQL stopped and started under a running merge: the merge stops with exit 75 (the
/// database unreachable, or its batch lock gone with the restart — another host could be sending
/// the batch now), and a rerun finishes it: every row once, at most one twice.
#[test]
fn merge_stops_when_the_database_restarts() {
    const ROWS: usize = 200;
    let stack = MailStack::get();
    let pg = PgServer::start();
    let (env, _text, _user, rcpt) = stack_host(stack, &pg, "pgmrestart", "");
    merge_files(&[&env], &rcpt, ROWS);
    let child = merge_cmd(&env, stack).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_rows(&pg, &schema("pgmrestart")) < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    pg.stop();
    pg.resume();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    let at_stop = journal_rows(&pg, &schema("pgmrestart"));
    assert!(at_stop < ROWS, "stopped mid-batch: {at_stop}");
    let rerun = merge_cmd(&env, stack).output().expect("rerun");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(journal_rows(&pg, &schema("pgmrestart")), ROWS);
    let counted = wait_for_distinct(stack, &rcpt, ROWS, Duration::from_secs(60));
    assert_eq!(counted.len(), ROWS);
    assert!(
        counted.values().filter(|n| **n > 1).count() <= 1,
        "{counted:?}"
    );
}

/// Two daemons on two hosts run the same 1-second poll job against one mailbox: each of 12
/// messages, arriving while both run, is handed to the job's command exactly once.
#[test]
fn two_daemons_one_poll_job() {
    let stack = MailStack::get();
    let handled = tempfile::NamedTempFile::new().expect("temp file");
    let log = handled.path().display().to_string();
    let jobs = format!(
        "[jobs.inbox]\nkind = \"poll\"\nevery = \"1s\"\nfrom_now = true\nexec = \"echo \\\"$MAILPILOT_SUBJECT $MAILPILOT_UID\\\" >> {log}; sleep 0.2\"\n"
    );
    let (first, text, user, _rcpt) = stack_host(stack, PgServer::shared(), "pgpoll", &jobs);
    let second = TestEnv::with_config(&text);
    let daemons: Vec<Child> = [&first, &second]
        .iter()
        .map(|env| env.spawn_with_secret(&stack.oauth, &["daemon"]))
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..12 {
        stack.deliver(&user, "INBOX", &format!("p{i}"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let lines = || {
        std::fs::read_to_string(handled.path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines().len() < 12 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let stderr: Vec<String> = daemons.into_iter().map(stop_daemon).collect();
    let mut subjects: Vec<String> = lines()
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    expected.sort();
    assert_eq!(subjects, expected, "each message once\n{stderr:#?}");
    let ran = stderr
        .iter()
        .filter(|e| e.contains("job=inbox event=end"))
        .count();
    assert_eq!(ran, 2, "both daemons ran the job\n{stderr:#?}");
}

/// A poll whose mailbox lock goes with its database session (the session ended by the server, as
/// a restart or a broken connection ends it, while the poll's other session lives on) records the
/// message in hand and stops with 75, since another host may be polling now; a rerun goes on from
/// there: every message handed over once.
#[test]
fn poll_stops_when_its_lock_is_lost() {
    let stack = MailStack::get();
    let pg = PgServer::start();
    let (env, _text, user, _rcpt) = stack_host(stack, &pg, "pglost", "");
    for s in ["m1", "m2", "m3", "m4"] {
        stack.deliver(&user, "INBOX", s);
    }
    let log = env.root().join("log");
    let go = env.root().join("go");
    let held = format!(
        "echo \"$MAILPILOT_UID\" >> {log}; [ \"$MAILPILOT_UID\" = 2 ] && while [ ! -e {go} ]; do sleep 0.05; done; true",
        log = log.display(),
        go = go.display()
    );
    let child = env.spawn_with_secret(&stack.oauth, &["poll", "--all", "--exec", &held]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the handler never reached UID 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = pg.psql(
        "mailpilot",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'",
    );
    assert_eq!(ended.trim(), "1", "the poll lock's session ended");
    std::fs::write(&go, "").expect("go");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("was lost with its database session"),
        "{stderr}"
    );
    let quick = format!("echo \"$MAILPILOT_UID\" >> {}", log.display());
    env.run_with_secret(&stack.oauth, &["poll", "--exec", &quick])
        .expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "1\n2\n3\n4\n",
        "each message once, UID 2 recorded before the stop"
    );
}

/// A 300-row merge killed on host A and rerun on host B (same `--batch`): every row arrives,
/// at most one twice, and that one with its twin's Message-ID; the journal is in the database.
#[test]
fn merge_killed_on_one_host_finished_on_another() {
    const ROWS: usize = 300;
    let stack = MailStack::get();
    let pg = PgServer::shared();
    let (a, text, _user, rcpt) = stack_host(stack, pg, "pgmerge", "");
    let b = TestEnv::with_config(&text);
    merge_files(&[&a, &b], &rcpt, ROWS);
    let merge = |env: &TestEnv| merge_cmd(env, stack);
    let journaled = || journal_rows(pg, &schema("pgmerge"));
    let mut child = merge(&a).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while journaled() < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let at_kill = journaled();
    assert!(
        (100..ROWS).contains(&at_kill),
        "killed mid-batch: {at_kill}"
    );
    let out = merge(&b).output().expect("run on B");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(journaled(), ROWS);
    let counted = wait_for_distinct(stack, &rcpt, ROWS, Duration::from_secs(60));
    assert_eq!(counted.len(), ROWS, "every row delivered once or more");
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1, "duplicates: {twice:?}");
    assert!(
        !a.state_dir().join("journal").exists() && !b.state_dir().join("journal").exists(),
        "no journal file on either host"
    );
}

/// A database that takes logins over TLS only: with `sslmode=require` and the CA in `[state]
/// ca_file` everything works; without the CA the certificate is refused (exit 1, the hint names
/// `ca_file`); with `sslmode=disable` the server refuses the plain login (exit 77).
#[test]
fn database_over_tls() {
    let stack = MailStack::get();
    let tls = stack.ca_file.parent().expect("tls dir");
    let pg = PgServer::start_tls(&tls.join("server.crt"), &tls.join("server.key"));
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let plain = pg.state_config("tls", &env.root().join("db-password"));
    let url = format!("postgresql://mailpilot@localhost:{}/mailpilot", pg.port);
    let with = |query: &str, ca: bool| {
        let mut state = plain.replace(
            &format!("postgresql://mailpilot@127.0.0.1:{}/mailpilot", pg.port),
            &format!("{url}?{query}"),
        );
        if ca {
            state.push_str(&format!("ca_file = \"{}\"\n", stack.ca_file.display()));
        }
        numbered_accounts(&server, 1, &state)
    };
    env.write_config(&with("sslmode=require", true));
    env.run(&["state", "init"]).expect_code(0);
    env.import_numbered(&server, 0);
    env.run_with_secret(&server, &["auth", "token", "a00"])
        .expect_code(0);
    env.write_config(&with("sslmode=require", false));
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("TLS certificate is not trusted") && run.stderr.contains("ca_file"),
        "{}",
        run.stderr
    );
    env.write_config(&with("sslmode=disable", true));
    let run = env.run_with_secret(&server, &["auth", "token", "a00"]);
    run.expect_code(77);
    assert!(run.stderr.contains("refused the login"), "{}", run.stderr);
}
