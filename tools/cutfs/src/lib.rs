//! cutfs: a FUSE file system held in memory that loses, on command, everything that was not
//! made durable — a power cut on demand, for testing what a program's fsyncs really cover.
//!
//! A file's data and size are durable once the file is fsynced (or fdatasynced); a directory's
//! entries once the directory is fsynced. A cut (a write of `cut` to the control file
//! `/.cutfs` at the mount's root, as [`Mount::cut`] does) reverts the whole tree to that durable
//! state; `cut-data` reverts only file data and sizes, keeping every directory change. Handles
//! opened before a cut fail with EIO. See README.md for the whole model.
//!
//! The session runs on one thread ([`fuser::Config`]'s default), which is what makes a cut
//! through the control file come after every request queued before it.

mod fs;
mod tree;

use std::io;
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption};

pub use tree::{CONTROL_NAME, Cut};

/// Why cutfs cannot mount here, if it cannot: no `/dev/fuse`.
pub fn unavailable() -> Option<String> {
    if Path::new("/dev/fuse").exists() {
        None
    } else {
        Some("/dev/fuse is absent: this machine cannot mount a FUSE file system".into())
    }
}

/// A cutfs mounted on a directory, served by a thread of this process; unmounted when dropped.
pub struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

fn config() -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("cutfs".into()),
        MountOption::Subtype("cutfs".into()),
        MountOption::DefaultPermissions,
    ];
    config
}

impl Mount {
    /// Mounts an empty cutfs on `path` (an existing directory) and serves it on a thread.
    pub fn new(path: &Path) -> io::Result<Mount> {
        let session = fuser::spawn_mount(fs::CutFs::default(), path, &config())?;
        Ok(Mount { session: Some(session), path: path.to_owned() })
    }

    /// The power cut: drops every change not made durable, through the control file. Through
    /// the kernel on purpose: the session serves one request at a time in the order the kernel
    /// queued them, so the cut comes after every request a process killed just before had
    /// already sent (a rename still in the queue cannot land on the tree after the cut).
    pub fn cut(&self, cut: Cut) -> io::Result<()> {
        let command = match cut {
            Cut::Unsynced => "cut\n",
            Cut::UnsyncedData => "cut-data\n",
        };
        std::fs::write(self.path.join(CONTROL_NAME), command)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the serving thread.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

/// Mounts an empty cutfs on `path` and serves it until it is unmounted (`umount PATH`).
pub fn serve(path: &Path) -> io::Result<()> {
    fuser::mount(fs::CutFs::default(), path, &config())
}
