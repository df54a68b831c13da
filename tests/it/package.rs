//! The Debian package (issue 15, point 7): scripts/package-deb.sh packages the binary under
//! test, dpkg installs it on this machine, and the installed relayd checks the installed
//! config; the man pages render, the bash completion completes, the unit verifies; removing
//! keeps the edited config, purging takes it.

use crate::common;

use std::path::{Path, PathBuf};

use common::{BIN, run};

const PACKAGE: &str = "relayd";

/// Purges the package when the test ends, however it ends: the machine is left as found.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

fn sh(script: &str) -> String {
    let out = run("sh", &["-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs scripts/package-deb.sh on the binary under test; returns the .deb it made.
fn build_package(out: &Path) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package-deb.sh");
    let made = run("bash", &[script, "--binary", BIN, "--out", out.to_str().unwrap()]);
    assert!(made.status.success(), "package-deb.sh: {}", String::from_utf8_lossy(&made.stderr));
    let path = PathBuf::from(String::from_utf8_lossy(&made.stdout).trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        path.ends_with(format!("relayd_{version}_{}.deb", sh("dpkg --print-architecture").trim()))
    );
    path
}

#[test]
fn the_debian_package_installs_a_relayd_that_checks_its_config() {
    if sh("id -u").trim() != "0" {
        eprintln!("skipped: installing a package needs root (CI runs as root)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_package(out.path());
    let deb = deb.to_str().unwrap();

    let contents = sh(&format!("dpkg-deb --contents {deb}"));
    for path in [
        "./usr/bin/relayd",
        "./usr/lib/systemd/system/relayd.service",
        "./etc/relayd/relayd.toml",
        "./usr/share/man/man1/relayd.1.gz",
        "./usr/share/man/man1/relayd-queue-list.1.gz",
        "./usr/share/bash-completion/completions/relayd",
        "./usr/share/zsh/vendor-completions/_relayd",
        "./usr/share/fish/vendor_completions.d/relayd.fish",
        "./usr/share/doc/relayd/examples/primary.toml",
        "./usr/share/doc/relayd/examples/witness.toml",
        "./usr/share/doc/relayd/operations.md",
        "./usr/share/doc/relayd/copyright",
    ] {
        assert!(
            contents.lines().any(|line| line.ends_with(path)),
            "{path} in the package:\n{contents}"
        );
    }
    let control = sh(&format!("dpkg-deb --field {deb} Package Version Depends"));
    assert!(control.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))), "{control}");
    assert_eq!(sh(&format!("dpkg-deb --info {deb} conffiles")).trim(), "/etc/relayd/relayd.toml");

    // A package left by an earlier run that died would make this install an upgrade.
    let _ = run("dpkg", &["--purge", PACKAGE]);
    let _installed = Installed;
    sh(&format!("dpkg -i {deb} >/dev/null"));
    assert_eq!(
        sh("/usr/bin/relayd --version").trim(),
        format!("relayd {}", env!("CARGO_PKG_VERSION"))
    );
    let checked = sh("/usr/bin/relayd check-config --config /etc/relayd/relayd.toml");
    assert!(checked.contains("ok (primary node"), "{checked}");
    // The postinst made the unit's user, and the config is readable by it alone (and root).
    assert!(sh("getent passwd relayd").starts_with("relayd:"));
    assert_eq!(sh("stat -c '%G %a' /etc/relayd/relayd.toml").trim(), "relayd 640");

    // The man pages: the main one with the sections clap alone would not write, and a
    // subcommand's, as man renders them.
    let page = sh("zcat /usr/share/man/man1/relayd.1.gz");
    for section in [".SH FILES", ".SH SIGNALS", ".SH \"EXIT STATUS\"", "relayd\\-queue(1)"] {
        assert!(page.contains(section), "{section} in relayd.1:\n{page}");
    }
    if !run("sh", &["-c", "command -v man"]).stdout.is_empty() {
        let rendered =
            sh("MANWIDTH=80 man -l /usr/share/man/man1/relayd-queue-delete.1.gz 2>/dev/null");
        assert!(rendered.contains("--dry-run"), "relayd-queue-delete(1):\n{rendered}");
    }
    // The bash completion, loaded as bash-completion would, completes subcommands and flags.
    let complete = |words: &str, current: usize| {
        sh(&format!(
            "bash -c 'source /usr/share/bash-completion/completions/relayd; COMP_WORDS=({words}); \
             COMP_CWORD={current}; _relayd relayd \"${{COMP_WORDS[{current}]}}\" \
             \"${{COMP_WORDS[{}]}}\"; echo \"${{COMPREPLY[*]}}\"'",
            current - 1
        ))
    };
    assert_eq!(complete("relayd qu", 1).trim(), "queue");
    assert!(complete("relayd queue delete --dr", 3).contains("--dry-run"));

    // The installed unit, with the installed binary its ExecStart and ExecStartPre name.
    if !run("sh", &["-c", "command -v systemd-analyze"]).stdout.is_empty() {
        let verify = run("systemd-analyze", &["verify", "/usr/lib/systemd/system/relayd.service"]);
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "verify: {said}");
    }

    // Removing keeps an edited conffile; purging takes it. The spool directory is never
    // removed (it may hold mail), which the postrm says.
    sh("echo '# edited' >> /etc/relayd/relayd.toml");
    sh("dpkg -r relayd >/dev/null");
    assert!(!Path::new("/usr/bin/relayd").exists(), "the binary goes with the package");
    assert!(sh("cat /etc/relayd/relayd.toml").contains("# edited"), "remove keeps the conffile");
    sh("dpkg --purge relayd >/dev/null");
    assert!(!Path::new("/etc/relayd/relayd.toml").exists(), "purge takes the conffile");
}
