//! A private Postfix instance, used as an SMTP client nobody here wrote: mail submitted with its
//! sendmail(1) is relayed by its smtp(8) client to `relayhost`, which tests point at relayd.
//!
//! Everything the instance owns lives in one temp dir: its config directory (main.cf and a
//! master.cf without any smtpd listener), queue_directory, data_directory (master.lock), pid
//! files, sockets and its log file, so any number of instances run side by side and the
//! system's /etc/postfix is only read for the installation's meta files (postfix-files).
//!
//! Postfix accepts a second instance with `postfix -c DIR` and `sendmail -C DIR` without
//! `alternate_config_directories` because the tests run as root: the check that a non-default
//! config directory is listed in the default main.cf applies only to unprivileged callers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{PATIENCE, run, wait_for};

pub struct Postfix {
    pub dir: tempfile::TempDir,
}

impl Postfix {
    /// Creates and starts an instance that relays everything to 127.0.0.1:`relay_port`, and
    /// waits until its master has started logging.
    pub fn start(relay_port: u16) -> Postfix {
        Postfix::start_with(relay_port, "", "")
    }

    /// A customer's mail server, as relayd's next hop: an smtpd on 127.0.0.1:`port` that takes
    /// mail for `domain` and knows only the `users` there (Postfix's relay_recipient_maps:
    /// anyone else gets "550 5.1.1 ... User unknown in relay recipient table").
    pub fn customer(port: u16, domain: &str, users: &[&str]) -> Postfix {
        let users: Vec<String> = users.iter().map(|u| format!("{u}@{domain}=ok")).collect();
        let main = format!(
            "relay_domains = {domain}\nrelay_recipient_maps = inline:{{ {} }}\n",
            users.join(", ")
        );
        let master = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
        // Nothing is relayed on from it in the tests; its relayhost is a port nobody uses.
        Postfix::start_with(super::free_port(), &main, &master)
    }

    /// [`Postfix::start`], with lines added to main.cf and master.cf.
    fn start_with(relay_port: u16, main_extra: &str, master_extra: &str) -> Postfix {
        let uid = run("id", &["-u"]);
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "a private Postfix instance needs root (postfix start, and sendmail -C without \
             alternate_config_directories in /etc/postfix/main.cf)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        // The daemons run as the postfix user, which must get through to the queue directory.
        set_mode(root, 0o755);
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir(root.join(sub)).expect("create instance dir");
        }
        let postfix = Postfix { dir };
        let main = main_cf(root, relay_port) + main_extra;
        std::fs::write(postfix.config_dir().join("main.cf"), main).expect("write main.cf");
        let master = format!("{MASTER_CF}{master_extra}");
        std::fs::write(postfix.config_dir().join("master.cf"), master).expect("write master.cf");
        // `check` creates the queue subdirectories with the owners and modes Postfix wants
        // (postdrop group on maildrop and public); the data directory must belong to postfix.
        // (Not `set-permissions`: that also resets the system installation's files.)
        postfix.postfix(&["check"]);
        let out = run("chown", &["postfix", path_str(&root.join("data"))]);
        assert!(out.status.success(), "chown postfix data_directory");
        postfix.postfix(&["start"]);
        wait_for("the private postfix master to start", || {
            postfix.log().contains("daemon started")
        });
        postfix
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("maillog")
    }

    /// Everything the instance has logged (postlogd writes it to `maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `postfix -c CONF ARGS...` and fails the test if it fails.
    fn postfix(&self, args: &[&str]) {
        let conf = self.config_dir();
        let mut all = vec!["-c", path_str(&conf)];
        all.extend_from_slice(args);
        let out = run("postfix", &all);
        assert!(
            out.status.success(),
            "postfix {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Submits `message` (LF or CRLF lines) with sendmail(1); a line with a lone "." is data.
    pub fn sendmail(&self, sender: &str, recipients: &[&str], message: &[u8]) {
        let conf = self.config_dir();
        let mut child = Command::new("sendmail")
            .args(["-C", path_str(&conf), "-i", "-f", sender, "--"])
            .args(recipients)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run postfix's sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(message)
            .expect("write the message to sendmail");
        let out = child.wait_with_output().expect("wait for sendmail");
        assert!(
            out.status.success(),
            "sendmail: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pid in the master's pid file, if it has written one.
    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    /// `postfix stop` only signals the master; wait (boundedly, and without panicking in a
    /// drop) until it has gone, so the temp dir is not removed under a running instance.
    fn drop(&mut self) {
        let pid = self.master_pid();
        let conf = self.config_dir();
        let _ = Command::new("postfix")
            .args(["-c", path_str(&conf), "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = pid {
            let deadline = Instant::now() + PATIENCE;
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// True while the process exists and is not a zombie waiting for a reaper.
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn main_cf(root: &Path, relay_port: u16) -> String {
    format!(
        "{MAIN_CF}# A private test instance; see tests/it/common/postfix.rs.
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
inet_interfaces = loopback-only
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
# Log the SMTP dialogue with relayd: commands sent ('> ') and replies ('< ').
debug_peer_list = 127.0.0.1
debug_peer_level = 2
# Retry soon, and give up soon, should relayd refuse or be down.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1m
bounce_queue_lifetime = 1m
",
        root = root.display()
    )
}

/// The services needed to submit with sendmail and relay with smtp; no smtpd, no local
/// delivery, no TLS. (scripts/drill.sh's sending Postfix adds its smtpd to the same file.)
const MASTER_CF: &str = include_str!("../../peers/postfix-master.cf");

/// The start of main.cf that the drill's and the benchmark's Postfix share (no local delivery,
/// no TLS, IPv4 on loopback).
const MAIN_CF: &str = include_str!("../../peers/postfix-main.cf");
