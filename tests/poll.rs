//! `mailpilot poll` against the real Dovecot: each message handed over once, in UID order, never
//! skipped, with checkpoints, locks, actions and UIDVALIDITY changes.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{MailStack, Policy, Run, TestEnv};

fn setup(stack: &MailStack, test: &str) -> (TestEnv, String) {
    let (env, user) = TestEnv::for_mailbox(stack, test);
    env.import_for(&stack.oauth, &user);
    (env, user)
}

fn poll(env: &TestEnv, stack: &MailStack, args: &[&str]) -> Run {
    let mut all = vec!["poll"];
    all.extend_from_slice(args);
    env.run_full(
        &all,
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    )
}

fn subjects(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["subject"].as_str().expect("subject").to_string()
        })
        .collect()
}

/// Three polls with deliveries between them: each message printed exactly once, in UID order,
/// with its fields; flags unchanged (BODY.PEEK).
#[test]
fn each_message_once_in_order() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "poll3");
    stack.deliver(&user, "INBOX", "m1");
    stack.deliver(&user, "INBOX", "m2");
    let run = poll(&env, stack, &["--all"]);
    run.expect_code(0);
    assert_eq!(subjects(&run), ["m1", "m2"]);
    let first: serde_json::Value =
        serde_json::from_str(run.stdout.lines().next().expect("line")).expect("json");
    assert_eq!(first["version"], 1);
    assert_eq!(first["from"][0], "Sender <sender@example.com>");
    assert_eq!(first["text"].as_str().map(str::trim), Some("Body of m1"));
    assert!(first["message_id"].as_str().expect("id").starts_with("m1."));
    for s in ["m3", "m4", "m5"] {
        stack.deliver(&user, "INBOX", s);
    }
    let run = poll(&env, stack, &[]);
    run.expect_code(0);
    assert_eq!(subjects(&run), ["m3", "m4", "m5"]);
    let run = poll(&env, stack, &[]);
    run.expect_code(0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("INBOX: 0 new messages handled"),
        "{}",
        run.stderr
    );
    let flags = stack.flags(&user, "INBOX");
    assert_eq!(flags.len(), 5);
    assert!(
        flags.iter().all(|(_, f)| !f.contains("\\Seen")),
        "polling changed no flags: {flags:?}"
    );
    let run = poll(&env, stack, &["--all"]);
    assert!(
        run.stdout.is_empty(),
        "--all only matters on the first poll"
    );
}

/// The first poll refuses to guess where to start.
#[test]
fn first_poll_needs_a_start() {
    let stack = MailStack::get();
    let (env, _user) = setup(stack, "pollstart");
    let run = poll(&env, stack, &[]);
    run.expect_code(2);
    assert!(run.stderr.starts_with("error: first poll of INBOX for account \"work\": choose where to start with --since 2d, --from-now or --all"), "{}", run.stderr);
    let run = poll(&env, stack, &["--from-now"]);
    run.expect_code(0);
    assert!(run.stdout.is_empty());
}

/// `--exec` failing on the 3rd of 5 messages: the first two are checkpointed, the next run starts
/// at the 3rd; the command sees the raw message and the environment.
#[test]
fn exec_failure_stops_before_checkpoint() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollexec");
    for s in ["m1", "m2", "m3", "m4", "m5"] {
        stack.deliver(&user, "INBOX", s);
    }
    let log = env.root().join("log");
    let failing = format!(
        "[ \"$MAILPILOT_SUBJECT\" = m3 ] && exit 3; grep -q \"^Subject: $MAILPILOT_SUBJECT\" && echo \"$MAILPILOT_UID $MAILPILOT_SUBJECT\" >> {}",
        log.display()
    );
    let run = poll(&env, stack, &["--all", "--exec", &failing]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("error: stopped at UID 3 of INBOX; the next poll starts with it"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("failed for UID 3 (exit status: 3)"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&log).expect("log"), "1 m1\n2 m2\n");
    let working = format!(
        "echo \"$MAILPILOT_UID $MAILPILOT_SUBJECT\" >> {}",
        log.display()
    );
    poll(&env, stack, &["--exec", &working]).expect_code(0);
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        "1 m1\n2 m2\n3 m3\n4 m4\n5 m5\n"
    );
}

/// `kill -9` while `--exec` handles a message: the rerun hands that message over again, and
/// nothing is skipped.
#[test]
fn killed_during_exec_skips_nothing() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollkill");
    for s in ["m1", "m2", "m3", "m4"] {
        stack.deliver(&user, "INBOX", s);
    }
    let log = env.root().join("log");
    let slow = format!(
        "echo \"$MAILPILOT_UID\" >> {}; [ \"$MAILPILOT_UID\" = 2 ] && sleep 30; true",
        log.display()
    );
    let mut child = env
        .cmd(&["poll", "--all", "--exec", &slow])
        .env("MP_TEST_SECRET", stack.oauth.client_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read_to_string(&log).unwrap_or_default().lines().count() < 2 {
        assert!(Instant::now() < deadline, "the handler never reached UID 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let quick = format!("echo \"$MAILPILOT_UID\" >> {}", log.display());
    poll(&env, stack, &["--exec", &quick]).expect_code(0);
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        "1\n2\n2\n3\n4\n",
        "UID 2 again, then the rest"
    );
}

/// Two polls started together on one mailbox: no message is handled twice, none is missed.
#[test]
fn concurrent_polls_handle_each_once() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollpair");
    poll(&env, stack, &["--from-now"]).expect_code(0);
    for i in 1..=8 {
        stack.deliver(&user, "INBOX", &format!("m{i}"));
    }
    let log = env.root().join("log");
    let cmd = format!("echo \"$MAILPILOT_UID\" >> {}; sleep 0.1", log.display());
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.cmd(&["poll", "--exec", &cmd])
                .env("MP_TEST_SECRET", stack.oauth.client_secret())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut uids: Vec<u32> = fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| l.parse().expect("uid"))
        .collect();
    uids.sort_unstable();
    assert_eq!(uids, (1..=8).collect::<Vec<_>>(), "each exactly once");
}

/// `--move Archive` leaves INBOX empty and Archive holding the messages; `--mark-seen` and
/// `--flag` set flags.
#[test]
fn move_and_flag_actions() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollmove");
    stack.create_mailbox(&user, "Archive");
    for s in ["m1", "m2", "m3"] {
        stack.deliver(&user, "INBOX", s);
    }
    let run = poll(
        &env,
        stack,
        &[
            "--all",
            "--mark-seen",
            "--flag",
            "processed",
            "--move",
            "Archive",
        ],
    );
    run.expect_code(0);
    assert_eq!(subjects(&run), ["m1", "m2", "m3"]);
    assert!(stack.flags(&user, "INBOX").is_empty(), "INBOX is empty");
    let archived = stack.flags(&user, "Archive");
    assert_eq!(archived.len(), 3);
    assert!(
        archived
            .iter()
            .all(|(_, f)| f.contains("\\Seen") && f.contains("processed")),
        "{archived:?}"
    );
}

/// A recreated mailbox (new UIDVALIDITY): warned about, continued from the new UIDNEXT, or with
/// `--replay` handled from the start.
#[test]
fn uidvalidity_change() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollvalidity");
    stack.create_mailbox(&user, "Work");
    stack.deliver(&user, "Work", "old1");
    stack.deliver(&user, "Work", "old2");
    assert_eq!(
        subjects(&poll(&env, stack, &["-m", "Work", "--all"])),
        ["old1", "old2"]
    );
    stack.delete_mailbox(&user, "Work");
    std::thread::sleep(Duration::from_millis(1100)); // UIDVALIDITY is time-based
    stack.create_mailbox(&user, "Work");
    stack.deliver(&user, "Work", "before-poll");
    let run = poll(&env, stack, &["-m", "Work"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("warning: UIDVALIDITY of Work changed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("continuing with new messages only (use --replay to handle all again)"),
        "{}",
        run.stderr
    );
    assert!(subjects(&run).is_empty());
    stack.deliver(&user, "Work", "after");
    assert_eq!(subjects(&poll(&env, stack, &["-m", "Work"])), ["after"]);
    stack.delete_mailbox(&user, "Work");
    std::thread::sleep(Duration::from_millis(1100));
    stack.create_mailbox(&user, "Work");
    stack.deliver(&user, "Work", "r1");
    stack.deliver(&user, "Work", "r2");
    let run = poll(&env, stack, &["-m", "Work", "--replay"]);
    assert!(
        run.stderr
            .contains("handling every message again (--replay)"),
        "{}",
        run.stderr
    );
    assert_eq!(subjects(&run), ["r1", "r2"]);
}

/// IMAP login failure paths: a token expired at the server is refreshed once (OAUTHBEARER over
/// STARTTLS here); a revoked grant exits 77 with the decoded reason.
#[test]
fn imap_token_failures() {
    let stack = MailStack::get();
    let user = stack.user("pollauth");
    let env = TestEnv::new();
    env.config_for_stack(
        stack,
        &user,
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
        &stack.ca_file,
    );
    let text = fs::read_to_string(env.config_path())
        .expect("config")
        .replace(
            &format!(
                "port = {}\ntls = \"implicit\"\nmechanism = \"xoauth2\"",
                stack.ports.imaps
            ),
            &format!(
                "port = {}\ntls = \"starttls\"\nmechanism = \"oauthbearer\"",
                stack.ports.imap
            ),
        );
    env.write_config(&text);
    stack.oauth.set_policy(
        &user,
        Policy {
            real_lifetime: Some(0),
            ..Policy::default()
        },
    );
    env.import_for(&stack.oauth, &user);
    stack.oauth.set_policy(&user, Policy::default());
    stack.deliver(&user, "INBOX", "hello");
    let before = stack.oauth.refresh_count_for(&user);
    let run = poll(&env, stack, &["--all", "-v"]);
    run.expect_code(0);
    assert_eq!(subjects(&run), ["hello"]);
    assert!(
        run.stderr
            .contains("server rejected the access token; refreshing it once"),
        "{}",
        run.stderr
    );
    assert_eq!(stack.oauth.refresh_count_for(&user) - before, 1);
    stack.oauth.revoke_user(&user);
    let run = poll(&env, stack, &[]);
    run.expect_code(77);
    assert!(
        run.stderr.starts_with(&format!(
            "error: 127.0.0.1:{} rejected the access token of account \"work\" (status invalid_token (token invalid or expired)), and refreshing it failed\n",
            stack.ports.imap
        )),
        "{}",
        run.stderr
    );
}

/// `--save` writes .eml files, `--limit` leaves the rest for next time, `--delete` removes handled
/// mail; JSON output can save attachments.
#[test]
fn save_limit_delete_and_attachments() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollsave");
    for s in ["m1", "m2", "m3"] {
        stack.deliver(&user, "INBOX", s);
    }
    let dir = env.root().join("eml");
    let run = poll(
        &env,
        stack,
        &[
            "--all",
            "--save",
            dir.to_str().expect("utf8"),
            "--limit",
            "2",
            "--delete",
        ],
    );
    run.expect_code(0);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    assert!(
        files[0].ends_with("-1.eml") && files[1].ends_with("-2.eml"),
        "{files:?}"
    );
    assert!(fs::read_to_string(dir.join(&files[0]))
        .expect("eml")
        .contains("Subject: m1"));
    assert_eq!(
        stack.flags(&user, "INBOX").len(),
        1,
        "two deleted, one left for next time"
    );
    let msg = "From: a@example.com\r\nTo: b@example.com\r\nSubject: with file\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n--XX\r\nContent-Type: text/csv; name=\"data.csv\"\r\nContent-Disposition: attachment; filename=\"data.csv\"\r\n\r\na,b\r\n1,2\r\n--XX--\r\n";
    stack.doveadm(&["save", "-u", &user, "-m", "INBOX"], Some(msg.as_bytes()));
    let atts = env.root().join("atts");
    let run = poll(
        &env,
        stack,
        &["--save-attachments", atts.to_str().expect("utf8")],
    );
    run.expect_code(0);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2, "m3 and the new one");
    let att = &lines[1]["attachments"][0];
    assert_eq!(
        (att["name"].as_str(), att["content_type"].as_str()),
        (Some("data.csv"), Some("text/csv"))
    );
    let saved = att["saved_as"].as_str().expect("saved");
    assert_eq!(fs::read_to_string(saved).expect("attachment"), "a,b\r\n1,2");
}

/// Stores a message with an old arrival date (IMAP APPEND with a date; doveadm save has none).
fn append_old(env: &TestEnv, stack: &MailStack, email: &str, subject: &str) {
    let token = env
        .run(&["auth", "token", "work"])
        .stdout
        .trim()
        .to_string();
    let script = format!(
        "import imaplib, ssl\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx)\n\
         auth = 'user={email}' + chr(1) + 'auth=Bearer {token}' + chr(1) + chr(1)\n\
         m.authenticate('XOAUTH2', lambda _: auth.encode())\n\
         m.append('INBOX', None, '\"01-Jan-2020 08:00:00 +0000\"', b'From: a@example.com\\r\\nSubject: {subject}\\r\\n\\r\\nold\\r\\n')\n\
         m.logout()\n",
        ca = stack.ca_file.display(),
        port = stack.ports.imaps,
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A first `--since 2d` poll skips older mail for good: the next poll does not hand it over.
#[test]
fn since_window_is_remembered() {
    let stack = MailStack::get();
    let (env, user) = setup(stack, "pollsince");
    // The old message gets the higher UID: only the remembered window keeps it out.
    stack.deliver(&user, "INBOX", "recent");
    append_old(&env, stack, &user, "ancient");
    assert_eq!(subjects(&poll(&env, stack, &["--since", "2d"])), ["recent"]);
    assert!(
        subjects(&poll(&env, stack, &[])).is_empty(),
        "the old message stays skipped"
    );
    stack.deliver(&user, "INBOX", "new");
    assert_eq!(subjects(&poll(&env, stack, &[])), ["new"]);
}

/// A poll with nothing new asks one `STATUS` after logging in and neither opens the mailbox nor
/// searches it; new mail is handled as before.
#[test]
fn no_news_poll_asks_status_only() {
    use crate::support::fake_imap::{FakeImap, Misbehaviour};
    use crate::support::OAuthServer;
    let server = OAuthServer::start();
    let imap = FakeImap::start(Misbehaviour::None);
    imap.add(b"From: x@example.com\r\nSubject: one\r\n\r\nbody\r\n");
    let env = TestEnv::new();
    env.write_config(&imap.config(&server.token_url()));
    env.import(&server);
    let poll = |args: &[&str]| {
        let mut all = vec!["poll"];
        all.extend_from_slice(args);
        env.run_with_secret(&server, &all)
    };
    assert_eq!(subjects(poll(&["--all"]).expect_code(0)), ["one"]);
    assert_eq!((imap.count("EXAMINE"), imap.count("STATUS")), (1, 0));
    let quiet = poll(&[]);
    quiet.expect_code(0);
    assert!(quiet.stdout.is_empty());
    assert!(
        quiet
            .stderr
            .contains("0 new messages handled (checkpoint UID 1)"),
        "{}",
        quiet.stderr
    );
    assert_eq!(
        (imap.count("EXAMINE"), imap.count("STATUS")),
        (1, 1),
        "no EXAMINE without news"
    );
    assert_eq!(
        imap.count("UID"),
        2,
        "the first poll's size FETCH and body FETCH only"
    );
    // Three new messages: still one FETCH of sizes and one of bodies; nothing opens the mailbox
    // read-write or asks for capabilities when the poll only reads.
    for subject in ["two", "three", "four"] {
        imap.add(format!("From: x@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes());
    }
    assert_eq!(subjects(poll(&[]).expect_code(0)), ["two", "three", "four"]);
    assert_eq!((imap.count("EXAMINE"), imap.count("STATUS")), (2, 2));
    assert_eq!(imap.count("UID"), 4);
    assert_eq!((imap.count("SELECT"), imap.count("CAPABILITY")), (0, 0));
    // With an action the mailbox is selected read-write and each message fetched and marked.
    imap.add(b"From: x@example.com\r\nSubject: five\r\n\r\nbody\r\n");
    assert_eq!(subjects(poll(&["--mark-seen"]).expect_code(0)), ["five"]);
    assert_eq!(imap.count("SELECT"), 1);
}
