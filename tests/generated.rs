//! What the package ships is generated from the clap definitions: the man pages and the shell
//! completions name every subcommand that `--help` lists (read from the help text, not from the
//! generator), and the daemon's unit is the hardened one.

use std::process::Command;

use crate::support::TestEnv;

/// The commands a `--help` text lists under "Commands:" (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

/// Every command path: `["auth"]`, `["auth", "login"]`, …
fn command_tree(env: &TestEnv) -> Vec<Vec<String>> {
    let top = env.run(&["--help"]);
    top.expect_code(0);
    let mut paths = Vec::new();
    for name in commands(&top.stdout) {
        let help = env.run(&["help", name.as_str()]);
        help.expect_code(0);
        for sub in commands(&help.stdout) {
            paths.push(vec![name.clone(), sub]);
        }
        paths.push(vec![name]);
    }
    paths
}

#[test]
fn man_pages_and_completions_name_every_subcommand() {
    let env = TestEnv::new();
    let tree = command_tree(&env);
    assert!(tree.len() > 30, "{tree:?}");
    assert!(tree.contains(&vec!["auth".into(), "login".into()]));

    let man = env.run(&["man"]);
    man.expect_code(0);
    assert!(man.stdout.starts_with(".ie"), "roff expected");
    assert!(man.stdout.contains(".SH \"EXIT STATUS\""));
    let dir = env.root().join("man");
    env.run(&["man", "--dir", dir.to_str().expect("utf8")])
        .expect_code(0);
    for path in &tree {
        let name = format!("mailpilot-{}", path.join("-"));
        if path.len() == 1 {
            assert!(
                man.stdout.contains(&format!("mailpilot\\-{}(1)", path[0])),
                "mailpilot(1) does not list {name}"
            );
        }
        let page = std::fs::read_to_string(dir.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("no page {name}.1: {e}"));
        assert!(page.contains(&format!(".TH {name} 1")), "{name}.1: {page}");
    }
    // The page man(1) reads is valid roff with the sections written for it.
    let rendered = Command::new("man")
        .args(["-l", dir.join("mailpilot.1").to_str().expect("utf8")])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man(1): install man-db (scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "{text}");
    for section in [
        "SYNOPSIS",
        "SUBCOMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "SEE ALSO",
    ] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }

    let script = |shell: &str| {
        let run = env.run(&["completions", shell]);
        run.expect_code(0);
        run.stdout
    };
    let (bash, zsh, fish) = (script("bash"), script("zsh"), script("fish"));
    for path in &tree {
        let last = path.last().expect("name");
        // clap spells `-` in a name as `__subcmd__` too (print-cron → print__subcmd__cron).
        let bash_case =
            format!("mailpilot__subcmd__{}", path.join("__subcmd__")).replace('-', "__subcmd__");
        assert!(bash.contains(&bash_case), "bash: no {bash_case}");
        assert!(zsh.contains(&format!("'{last}:")), "zsh: no {last}");
        let fish_line = match path.as_slice() {
            [top] => format!("__fish_mailpilot_needs_command\" -f -a \"{top}\""),
            [top, _] => format!("__fish_mailpilot_using_subcommand {top}"),
            _ => unreachable!(),
        };
        assert!(
            fish.lines()
                .any(|l| l.contains(&fish_line) && l.contains(&format!("-a \"{last}\""))),
            "fish: no {path:?}"
        );
    }
    let file = env.root().join("mailpilot.bash");
    std::fs::write(&file, &bash).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(check.success(), "bash -n refused the completion script");
    let run = env.run(&["completions", "tcsh"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("invalid value 'tcsh'"),
        "{}",
        run.stderr
    );
}

/// `schedule print-systemd --daemon` prints the unit the package installs: the daemon as its own
/// user, state under StateDirectory, the sandbox on; it needs no configuration file yet.
#[test]
fn daemon_unit() {
    let env = TestEnv::new();
    let run = env.run(&[
        "--config",
        "/etc/mailpilot/config.toml",
        "schedule",
        "print-systemd",
        "--daemon",
        "--bin",
        "/usr/bin/mailpilot",
    ]);
    run.expect_code(0);
    for line in [
        "ExecStart=/usr/bin/mailpilot --config /etc/mailpilot/config.toml daemon",
        "User=mailpilot",
        "StateDirectory=mailpilot",
        "Environment=XDG_STATE_HOME=%S",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "{line} missing:\n{}",
            run.stdout
        );
    }
    let run = env.run(&["schedule", "print-systemd"]);
    run.expect_code(2);
}
