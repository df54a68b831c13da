//! Sets `RELAYD_GIT_COMMIT` for `relayd_build_info`: the commit the binary is built from (12
//! hex digits), or empty when it is built outside a git checkout or without git (a source
//! tarball), which must build all the same.

use std::process::Command;

/// What `git ARGS` prints, trimmed; None when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=RELAYD_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // Run again when HEAD moves: HEAD itself (a checkout), the branch it names (a commit), and
    // the packed refs. Only files that exist: cargo reruns every build for one that does not.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
