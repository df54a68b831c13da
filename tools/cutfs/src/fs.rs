//! The FUSE side: each kernel request becomes a call on the [`Tree`], under one lock, plus the
//! control file `/.cutfs` and the bookkeeping of open handles.
//!
//! Nothing is cached by the kernel beyond a request: entries and attributes are answered with
//! a time-to-live of zero and files are opened without `FOPEN_KEEP_CACHE`, so that after a cut
//! the kernel asks again and sees the tree as the cut left it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Attr, CONTROL, CONTROL_NAME, Cut, ROOT, Tree};

/// Entries and attributes are never cached by the kernel (see the module's doc).
const TTL: Duration = Duration::ZERO;
/// What the control file takes (each optionally followed by a newline): the cut of
/// everything unsynced, and the cut of unsynced file data only.
const CUT_COMMANDS: [(&[u8], Cut); 2] = [(b"cut", Cut::Unsynced), (b"cut-data", Cut::UnsyncedData)];

/// The tree and the open handles.
#[derive(Default)]
struct State {
    tree: Tree,
    /// Open handles of tree inodes: handle → inode. A cut empties it, so that a handle opened
    /// before a cut fails with EIO (the disk it was opened on is gone).
    handles: HashMap<u64, u64>,
    next_handle: u64,
}

impl State {
    /// The power cut.
    fn cut(&mut self, cut: Cut) {
        self.tree.cut(cut);
        self.handles.clear();
    }

    fn open(&mut self, ino: u64) -> Result<u64, Errno> {
        self.tree.opened(ino)?;
        self.next_handle += 1;
        self.handles.insert(self.next_handle, ino);
        Ok(self.next_handle)
    }

    /// The inode of a handle, if the handle is from before the last cut: EIO.
    fn handle(&self, fh: FileHandle) -> Result<u64, Errno> {
        self.handles.get(&fh.0).copied().ok_or(Errno::EIO)
    }

    /// A handle closed (release of a file, releasedir of a directory).
    fn close(&mut self, fh: FileHandle) {
        if let Some(ino) = self.handles.remove(&fh.0) {
            self.tree.released(ino);
        }
    }

    /// What a handle's inode holds made durable (fsync of a file, fsyncdir of a directory).
    fn sync(&mut self, fh: FileHandle) -> Result<(), Errno> {
        self.handle(fh).and_then(|ino| self.tree.sync(ino))
    }
}

/// The file system served over FUSE.
#[derive(Default)]
pub struct CutFs {
    state: Mutex<State>,
}

impl CutFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.ctime,
        kind: if attr.is_dir { FileType::Directory } else { FileType::RegularFile },
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn control_attr() -> FileAttr {
    file_attr(&Attr {
        ino: CONTROL,
        is_dir: false,
        size: 0,
        perm: 0o600,
        nlink: 1,
        uid: 0,
        gid: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
    })
}

fn is_control(parent: INodeNo, name: &OsStr) -> bool {
    parent.0 == ROOT && name == CONTROL_NAME
}

fn time(value: TimeOrNow) -> SystemTime {
    match value {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// The permission bits of a mode, less the umask.
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn entry(reply: ReplyEntry, result: Result<Attr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for CutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if is_control(parent, name) {
            return reply.entry(&TTL, &control_attr(), Generation(0));
        }
        entry(reply, self.state().tree.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == CONTROL {
            return reply.attr(&TTL, &control_attr());
        }
        match self.state().tree.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 == CONTROL {
            // `echo cut > .cutfs` truncates first: nothing to truncate.
            return reply.attr(&TTL, &control_attr());
        }
        let mut state = self.state();
        let result = (|| {
            if let Some(fh) = fh {
                state.handle(fh)?;
            }
            let tree = &mut state.tree;
            if let Some(size) = size {
                tree.truncate(ino.0, size)?;
            }
            let times = (atime.map(time), mtime.map(time));
            let perm = mode.map(|mode| perm(mode, 0));
            if perm.is_some() || uid.is_some() || gid.is_some() || times != (None, None) {
                tree.set_meta(ino.0, perm, (uid, gid), times)?;
            }
            tree.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = (req.uid(), req.gid());
        entry(reply, self.state().tree.mkdir(parent.0, name, perm(mode, umask), owner));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_control(parent, name) {
            return reply.error(Errno::EPERM);
        }
        empty(reply, self.state().tree.remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().tree.remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if is_control(parent, name) {
            return reply.error(Errno::EPERM);
        }
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(reply, self.state().tree.rename(parent.0, name, newparent.0, newname, no_replace));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if ino.0 == CONTROL {
            return reply.error(Errno::EPERM);
        }
        entry(reply, self.state().tree.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CONTROL {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let mut state = self.state();
        let result = state
            .tree
            .attr(ino.0)
            .and_then(|attr| if attr.is_dir { Err(Errno::EISDIR) } else { state.open(ino.0) });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let owner = (req.uid(), req.gid());
        let result = state
            .tree
            .create(parent.0, name, perm(mode, umask), owner)
            .and_then(|attr| Ok((attr, state.open(attr.ino)?)));
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CONTROL {
            let tree = &self.state().tree;
            let status = format!("cuts {}\n{}", tree.cuts(), tree.last_cut());
            let bytes = status.as_bytes();
            let from = (offset as usize).min(bytes.len());
            return reply.data(&bytes[from..(from + size as usize).min(bytes.len())]);
        }
        let mut state = self.state();
        let result = state.handle(fh).and_then(|ino| state.tree.read(ino, offset, size as usize));
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        if ino.0 == CONTROL {
            let command = data.strip_suffix(b"\n").unwrap_or(data);
            let Some(&(_, cut)) = CUT_COMMANDS.iter().find(|(word, _)| *word == command) else {
                return reply.error(Errno::EINVAL);
            };
            state.cut(cut);
            return reply.written(data.len() as u32);
        }
        let result = state.handle(fh).and_then(|ino| state.tree.write(ino, offset, data));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().close(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == CONTROL {
            return reply.ok();
        }
        empty(reply, self.state().sync(fh));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state
            .tree
            .attr(ino.0)
            .and_then(|attr| if attr.is_dir { state.open(ino.0) } else { Err(Errno::ENOTDIR) });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let list = match state.handle(fh).and_then(|ino| state.tree.list(ino)) {
            Ok(list) => list,
            Err(e) => return reply.error(e),
        };
        for (index, entry) in list.iter().enumerate().skip(offset as usize) {
            let kind = if entry.is_dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(entry.ino), index as u64 + 1, kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().close(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().sync(fh));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room, always: the tests are about losing data, not about running out.
        const BLOCKS: u64 = 1 << 28; // 1 TiB of 4 KiB blocks
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let mut state = self.state();
        let result = state
            .handle(fh)
            .and_then(|ino| state.tree.allocate(ino, offset.saturating_add(length), keep_size));
        empty(reply, result);
    }
}
