//! A small IMAP server on 127.0.0.1:0 (plain TCP: accounts use `tls = "none"` to loopback) that
//! misbehaves on purpose, for the failures a real Dovecot will not produce: dropping the session
//! after login, flooding a FETCH with untagged responses, sending a huge literal, answering a FETCH
//! with another UID. It accepts any token. Every loop it runs is bounded in bytes and time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A well-behaved server.
    None,
    /// Accept the login and the first commands, then close the connection when the client waits
    /// for news (IDLE): a session that never lasts.
    DropAtIdle,
    /// Answer a body FETCH with untagged FETCH responses for other messages, this many bytes.
    FloodFetch(usize),
    /// Answer a body FETCH with one literal of this many bytes.
    HugeLiteral(usize),
    /// Answer a body FETCH of this UID with the message under another UID (plus 1000).
    WrongUidFor(u32),
    /// Answer SELECT with a line that is not IMAP, holding a terminal escape.
    GarbageSelect,
    /// List a UID far above UIDNEXT in `UID SEARCH` (and deliver it when asked).
    UidAboveUidnext,
    /// Report this UID's size, then behave as if it had been expunged: no body, not found by
    /// `UID SEARCH` (someone deleted it between the two).
    ExpungedAfterSize(u32),
}

/// The running server; its threads end with the test process.
pub struct FakeImap {
    /// The port to connect to.
    pub port: u16,
    state: Arc<Mutex<State>>,
    logins: Arc<AtomicU64>,
}

/// Commands seen, by name (`SELECT`, `STATUS`…), across connections.
static COMMANDS: Mutex<Vec<(u16, String)>> = Mutex::new(Vec::new());

struct State {
    misbehaviour: Misbehaviour,
    messages: BTreeMap<u32, Vec<u8>>,
    uidnext: u32,
}

/// The longest a flood or a huge literal is sent before the server gives up by itself.
const FLOOD_TIME: Duration = Duration::from_secs(20);

impl FakeImap {
    /// Starts a server with an empty INBOX.
    pub fn start(misbehaviour: Misbehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake IMAP");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            misbehaviour,
            messages: BTreeMap::new(),
            uidnext: 1,
        }));
        let logins = Arc::new(AtomicU64::new(0));
        let (st, count) = (state.clone(), logins.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (st, count) = (st.clone(), count.clone());
                thread::spawn(move || {
                    let _ = serve(conn, &st, &count);
                });
            }
        });
        Self {
            port,
            state,
            logins,
        }
    }

    /// Adds a message to INBOX; returns its UID.
    pub fn add(&self, message: &[u8]) -> u32 {
        let mut st = self.state.lock().expect("state");
        let uid = st.uidnext;
        st.messages.insert(uid, message.to_vec());
        st.uidnext += 1;
        uid
    }

    /// How many times this server was sent `command` (`SELECT`, `STATUS`…).
    pub fn count(&self, command: &str) -> usize {
        COMMANDS
            .lock()
            .expect("commands")
            .iter()
            .filter(|(port, c)| *port == self.port && c == command)
            .count()
    }

    /// How many AUTHENTICATE commands succeeded.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::SeqCst)
    }

    /// A config account `work` reading from this server, getting tokens from `token_url`.
    pub fn config(&self, token_url: &str) -> String {
        format!(
            r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "test-client"
client_secret_env = "MP_TEST_SECRET"
token_url = "{token_url}"

[accounts.work.imap]
host = "127.0.0.1"
port = {}
tls = "none"
"#,
            self.port
        )
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, logins: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    out.write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 IDLE] fake ready\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.trim_end().splitn(3, ' ');
        let tag = words.next().unwrap_or("*").to_string();
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        let rest = words.next().unwrap_or("").to_string();
        let misbehaviour = state.lock().expect("state").misbehaviour;
        if let Ok(port) = out.local_addr().map(|a| a.port()) {
            COMMANDS
                .lock()
                .expect("commands")
                .push((port, command.clone()));
        }
        match command.as_str() {
            "CAPABILITY" => write!(
                out,
                "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 IDLE UIDPLUS\r\n{tag} OK done\r\n"
            )?,
            "AUTHENTICATE" => {
                out.write_all(b"+ \r\n")?;
                line.clear();
                lines.read_line(&mut line)?;
                logins.fetch_add(1, Ordering::SeqCst);
                write!(out, "{tag} OK authenticated\r\n")?;
            }
            "SELECT" | "EXAMINE" if misbehaviour == Misbehaviour::GarbageSelect => {
                out.write_all(b"* \x1b[31mNOT IMAP AT ALL \x07(((\r\n")?;
            }
            "SELECT" | "EXAMINE" => {
                let st = state.lock().expect("state");
                write!(
                    out,
                    "* {} EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n* OK [UIDNEXT {}] ok\r\n{tag} OK [READ-WRITE] selected\r\n",
                    st.messages.len(),
                    st.uidnext
                )?;
            }
            "UID" => uid_command(&mut out, &tag, &rest, state, misbehaviour)?,
            "STATUS" => {
                let st = state.lock().expect("state");
                let mailbox = rest.split(' ').next().unwrap_or("INBOX");
                write!(
                    out,
                    "* STATUS {mailbox} (UIDNEXT {} UIDVALIDITY 1)\r\n{tag} OK status\r\n",
                    st.uidnext
                )?;
            }
            "IDLE" | "NOOP" if misbehaviour == Misbehaviour::DropAtIdle => return Ok(()),
            "IDLE" => {
                out.write_all(b"+ idling\r\n")?;
                line.clear();
                lines.read_line(&mut line)?;
                write!(out, "{tag} OK idle done\r\n")?;
            }
            "NOOP" => write!(out, "{tag} OK noop\r\n")?,
            "LOGOUT" => {
                write!(out, "* BYE bye\r\n{tag} OK logout\r\n")?;
                return Ok(());
            }
            _ => write!(out, "{tag} BAD unknown command\r\n")?,
        }
    }
}

fn uid_command(
    out: &mut TcpStream,
    tag: &str,
    rest: &str,
    state: &Mutex<State>,
    misbehaviour: Misbehaviour,
) -> std::io::Result<()> {
    let mut words = rest.splitn(3, ' ');
    let sub = words.next().unwrap_or("").to_ascii_uppercase();
    let set = words.next().unwrap_or("");
    let items = words.next().unwrap_or("");
    let st = state.lock().expect("state");
    // `UID FETCH 7 (…)` names the UID first; `UID SEARCH UID 7:* …` after the word UID.
    let range = if sub == "SEARCH" {
        items.split(' ').next().unwrap_or("")
    } else {
        set
    };
    let from: u32 = range
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    match sub.as_str() {
        "SEARCH" => {
            let uids: Vec<String> = st
                .messages
                .keys()
                .filter(|u| **u >= from)
                .filter(|u| misbehaviour != Misbehaviour::ExpungedAfterSize(**u))
                .map(ToString::to_string)
                .collect();
            let mut uids = uids;
            if misbehaviour == Misbehaviour::UidAboveUidnext {
                uids.push("4000000000".into());
            }
            write!(out, "* SEARCH {}\r\n{tag} OK search\r\n", uids.join(" "))
        }
        "FETCH" if items.contains("BODY") => {
            let wanted: Vec<(u32, Vec<u8>)> = in_set(set, &st.messages)
                .into_iter()
                .filter(|u| misbehaviour != Misbehaviour::ExpungedAfterSize(*u))
                .map(|u| (u, st.messages.get(&u).cloned().unwrap_or_default()))
                .collect();
            drop(st);
            for (uid, body) in &wanted {
                fetch(out, *uid, body, misbehaviour)?;
                if matches!(
                    misbehaviour,
                    Misbehaviour::FloodFetch(_) | Misbehaviour::HugeLiteral(_)
                ) {
                    break;
                }
            }
            write!(out, "{tag} OK fetch\r\n")
        }
        "FETCH" => {
            let mut answer = String::new();
            for uid in in_set(set, &st.messages) {
                let size = st.messages.get(&uid).map_or(0, Vec::len);
                answer.push_str(&format!("* 1 FETCH (UID {uid} RFC822.SIZE {size})\r\n"));
            }
            if misbehaviour == Misbehaviour::UidAboveUidnext {
                answer.push_str("* 2 FETCH (UID 4000000000 RFC822.SIZE 10)\r\n");
            }
            write!(out, "{answer}{tag} OK fetch\r\n")
        }
        _ => write!(out, "{tag} OK done\r\n"),
    }
}

/// The UIDs of `messages` in an IMAP UID set (`1:3,7,9:*`), ascending; `n:*` names the highest
/// UID even when it is below n, as RFC 3501 says.
fn in_set(set: &str, messages: &BTreeMap<u32, Vec<u8>>) -> Vec<u32> {
    let highest = messages.keys().next_back().copied().unwrap_or(0);
    let bound = |n: &str| {
        if n == "*" {
            highest
        } else {
            n.parse().unwrap_or(0)
        }
    };
    let mut uids: Vec<u32> = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b) = (bound(a), bound(b));
        let (lo, hi) = (a.min(b), a.max(b));
        uids.extend(messages.keys().copied().filter(|u| (lo..=hi).contains(u)));
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// One message's untagged FETCH answer (misbehaving as told).
fn fetch(
    out: &mut TcpStream,
    uid: u32,
    body: &[u8],
    misbehaviour: Misbehaviour,
) -> std::io::Result<()> {
    let started = Instant::now();
    match misbehaviour {
        Misbehaviour::FloodFetch(bytes) => {
            let mut sent = 0;
            let mut n = 1000u32;
            while sent < bytes && started.elapsed() < FLOOD_TIME {
                let line = format!("* {n} FETCH (UID {n} FLAGS (\\Seen))\r\n");
                out.write_all(line.as_bytes())?;
                sent += line.len();
                n = n.wrapping_add(1);
            }
        }
        Misbehaviour::HugeLiteral(size) => {
            write!(out, "* 1 FETCH (UID {uid} BODY[] {{{size}}}\r\n")?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < size && started.elapsed() < FLOOD_TIME {
                let n = chunk.len().min(size - sent);
                out.write_all(&chunk[..n])?;
                sent += n;
            }
            out.write_all(b")\r\n")?;
        }
        Misbehaviour::WrongUidFor(wrong) if wrong == uid => {
            write!(
                out,
                "* 1 FETCH (UID {} BODY[] {{{}}}\r\n",
                uid + 1000,
                body.len()
            )?;
            out.write_all(body)?;
            out.write_all(b")\r\n")?;
        }
        _ => {
            write!(out, "* 1 FETCH (UID {uid} BODY[] {{{}}}\r\n", body.len())?;
            out.write_all(body)?;
            out.write_all(b")\r\n")?;
        }
    }
    Ok(())
}
