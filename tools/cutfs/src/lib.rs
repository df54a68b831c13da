//! cutfs: a FUSE file system held in memory that loses, on command, everything that was not
//! made durable — a power cut on demand, for testing what a program's fsyncs really cover.
//!
//! A file's data and size are durable once the file is fsynced (or fdatasynced); a directory's
//! entries once the directory is fsynced. A cut (a write of `cut` to the control file
//! `/.cutfs` at the mount's root, or [`Cutter::cut`]) reverts the whole tree to that durable
//! state; handles opened before it fail with EIO. See README.md for the whole model.

mod fs;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fuser::{BackgroundSession, Config, MountOption};

pub use tree::CONTROL_NAME;

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
    cutter: Cutter,
    path: PathBuf,
}

/// Cuts the power of a mounted cutfs (from any thread).
#[derive(Clone)]
pub struct Cutter {
    state: Arc<Mutex<fs::State>>,
}

impl Cutter {
    /// Drops every change not made durable: the tree reverts to its durable state.
    pub fn cut(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).cut();
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).tree.cuts()
    }
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
        let state = Arc::new(Mutex::new(fs::State::default()));
        let filesystem = fs::CutFs { state: state.clone() };
        let session = fuser::spawn_mount(filesystem, path, &config())?;
        Ok(Mount { session: Some(session), cutter: Cutter { state }, path: path.to_owned() })
    }

    pub fn cutter(&self) -> Cutter {
        self.cutter.clone()
    }

    /// Drops every change not made durable (see [`Cutter::cut`]).
    pub fn cut(&self) {
        self.cutter.cut();
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
    let state = Arc::new(Mutex::new(fs::State::default()));
    fuser::mount(fs::CutFs { state }, path, &config())
}
