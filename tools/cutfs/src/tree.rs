//! The file tree and its two states: what the running system sees (volatile) and what a power
//! cut would leave (durable). No FUSE here: `fs.rs` maps requests onto these calls, and the
//! unit tests below drive them directly.
//!
//! The model is the pessimistic one (as LazyFS and ALICE assume of a disk and its file system):
//! - a file's data and size become durable only when that file is fsynced (or fdatasynced);
//! - a directory's entries (create, mkdir, link, rename, unlink, rmdir) become durable only when
//!   that directory is fsynced, and then all of them at once, as they are at that moment;
//! - a cut throws away everything else: the tree is rebuilt from the root's durable entries,
//!   each file with its durable contents (empty if it was never fsynced).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::Errno;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;
/// The control file's inode number; tree inodes start above it.
pub const CONTROL: u64 = 2;
/// The name of the control file in the root directory.
pub const CONTROL_NAME: &str = ".cutfs";

/// Files are held in pages of this size, shared between the two states until written.
const PAGE: usize = 4096;
/// The longest name a directory entry may have (as on Linux's own file systems).
const NAME_MAX: usize = 255;

type Page = Arc<[u8; PAGE]>;

/// A file's contents: its size and its pages (`None`: a hole, reads as zeros). Cloning copies
/// only the page table: a write after a clone copies the one page it touches.
#[derive(Clone, Default, Debug)]
struct Contents {
    size: u64,
    pages: Vec<Option<Page>>,
}

impl Contents {
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (index, within) = ((at / PAGE as u64) as usize, (at % PAGE as u64) as usize);
            let take = (PAGE - within).min((end - at) as usize);
            match self.pages.get(index).and_then(Option::as_ref) {
                Some(page) => out.extend_from_slice(&page[within..within + take]),
                None => out.resize(out.len() + take, 0),
            }
            at += take as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (index, within) = ((at / PAGE as u64) as usize, (at % PAGE as u64) as usize);
            let take = (PAGE - within).min(rest.len());
            if self.pages.len() <= index {
                self.pages.resize(index + 1, None);
            }
            let page = self.pages[index].get_or_insert_with(|| Arc::new([0; PAGE]));
            Arc::make_mut(page)[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            let keep = size.div_ceil(PAGE as u64) as usize;
            self.pages.truncate(keep);
            // The tail of the last page kept must read as zeros if the file grows again.
            let within = (size % PAGE as u64) as usize;
            if within != 0
                && let Some(Some(page)) = self.pages.last_mut()
            {
                Arc::make_mut(page)[within..].fill(0);
            }
        }
        self.size = size;
    }
}

#[derive(Debug)]
enum Kind {
    File {
        volatile: Contents,
        durable: Contents,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
        /// Names changed since the last sync: what the next one writes, so that a sync costs
        /// what changed, not what the directory holds.
        dirty: BTreeSet<OsString>,
        parent: u64,
    },
}

/// An inode's attributes as FUSE reports them.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Entries naming it in the volatile tree.
    links: u32,
    /// Entries naming it in some directory's durable entries: while any do, a cut may bring
    /// it back, so it is kept even when unlinked.
    durable_links: u32,
    /// Open handles.
    open: u32,
}

impl Inode {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 1,
            durable_links: 0,
            open: 0,
        }
    }

    fn entries(&self) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    /// Names `ino` in this directory (in place of whatever the name named).
    fn set_entry(&mut self, name: &OsStr, ino: u64) -> Result<(), Errno> {
        let Kind::Dir { entries, dirty, .. } = &mut self.kind else { return Err(Errno::ENOTDIR) };
        entries.insert(name.to_owned(), ino);
        dirty.insert(name.to_owned());
        touch(self);
        Ok(())
    }

    fn remove_entry(&mut self, name: &OsStr) -> Result<(), Errno> {
        let Kind::Dir { entries, dirty, .. } = &mut self.kind else { return Err(Errno::ENOTDIR) };
        entries.remove(name);
        dirty.insert(name.to_owned());
        touch(self);
        Ok(())
    }

    fn contents_mut(&mut self) -> Result<&mut Contents, Errno> {
        match &mut self.kind {
            Kind::File { volatile, .. } => Ok(volatile),
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

/// What a directory listing shows of one entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub is_dir: bool,
    pub name: OsString,
}

/// The whole file system's state.
#[derive(Debug)]
pub struct Tree {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Power cuts so far.
    cuts: u64,
    /// What the last cut reverted.
    last_cut: CutReport,
}

/// What a cut throws away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every change not made durable: file data and sizes, and directory entries.
    Unsynced,
    /// File data and sizes not made durable; directory changes all survive (as on a file
    /// system that journals its metadata at once, and as LazyFS models a cut): a file created
    /// and never fsynced comes back empty, a renamed one under its new name.
    UnsyncedData,
}

/// What a cut threw away, counted over what it left: files whose data or size went back,
/// directories whose entries did, and the inodes that vanished altogether.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    pub files_reverted: usize,
    pub dirs_reverted: usize,
    pub inodes_gone: usize,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "files_reverted {}\ndirs_reverted {}\ninodes_gone {}\n",
            self.files_reverted, self.dirs_reverted, self.inodes_gone
        )
    }
}

impl Contents {
    /// Whether `other` holds the same bytes (pages compared by identity first: a page not
    /// written since the last sync is shared).
    fn same_as(&self, other: &Contents) -> bool {
        self.size == other.size
            && self.pages.len() == other.pages.len()
            && self.pages.iter().zip(&other.pages).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            })
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// An empty root directory, itself durable (a fresh disk's file system).
    pub fn new() -> Tree {
        let root = Kind::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            dirty: BTreeSet::new(),
            parent: ROOT,
        };
        let mut inode = Inode::new(root, 0o755, 0, 0);
        inode.durable_links = 1;
        Tree {
            inodes: HashMap::from([(ROOT, inode)]),
            next_ino: CONTROL + 1,
            cuts: 0,
            last_cut: CutReport::default(),
        }
    }

    /// How many cuts this tree has been through.
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// What the last cut reverted.
    pub fn last_cut(&self) -> CutReport {
        self.last_cut
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.kind {
            Kind::File { volatile, .. } => (volatile.size, inode.links),
            Kind::Dir { .. } => (0, 2),
        };
        Ok(Attr {
            ino,
            is_dir: inode.is_dir(),
            size,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.inode(parent)?.entries()?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// The entries of a directory, "." and ".." first.
    pub fn list(&self, dir: u64) -> Result<Vec<Entry>, Errno> {
        let inode = self.inode(dir)?;
        let Kind::Dir { entries, parent, .. } = &inode.kind else { return Err(Errno::ENOTDIR) };
        let mut list = vec![
            Entry { ino: dir, is_dir: true, name: ".".into() },
            Entry { ino: *parent, is_dir: true, name: "..".into() },
        ];
        for (name, &ino) in entries {
            let is_dir = self.inode(ino).is_ok_and(Inode::is_dir);
            list.push(Entry { ino, is_dir, name: name.clone() });
        }
        Ok(list)
    }

    fn check_new_name(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if parent == ROOT && name == CONTROL_NAME {
            return Err(Errno::EEXIST);
        }
        if self.inode(parent)?.entries()?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<Attr, Errno> {
        self.check_new_name(parent, name)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(kind, perm, owner.0, owner.1));
        self.inode_mut(parent)?.set_entry(name, ino)?;
        self.attr(ino)
    }

    /// A new, empty regular file.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<Attr, Errno> {
        let kind = Kind::File { volatile: Contents::default(), durable: Contents::default() };
        self.add(parent, name, kind, perm, owner)
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<Attr, Errno> {
        self.inode(parent)?.entries()?;
        let kind = Kind::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            dirty: BTreeSet::new(),
            parent,
        };
        self.add(parent, name, kind, perm, owner)
    }

    /// A second name for a file.
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if self.inode(ino)?.is_dir() {
            return Err(Errno::EPERM);
        }
        self.check_new_name(parent, name)?;
        self.inode_mut(parent)?.set_entry(name, ino)?;
        let inode = self.inode_mut(ino)?;
        inode.links += 1;
        inode.ctime = SystemTime::now();
        self.attr(ino)
    }

    /// Removes a name: a file's (`dir` false) or an empty directory's (`dir` true).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.inode(parent)?.entries()?.get(name).ok_or(Errno::ENOENT)?;
        may_replace(dir, &self.inode(ino)?.kind)?;
        self.inode_mut(parent)?.remove_entry(name)?;
        self.unlinked(ino);
        Ok(())
    }

    /// One name fewer for `ino`.
    fn unlinked(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links = inode.links.saturating_sub(1);
            inode.ctime = SystemTime::now();
        }
        self.collect(ino);
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing what was there (a
    /// file by a file, an empty directory by a directory), as rename(2) does. With
    /// `no_replace`, an existing target is an error instead.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        if new_name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if new_parent == ROOT && new_name == CONTROL_NAME {
            return Err(Errno::EPERM);
        }
        let ino = *self.inode(parent)?.entries()?.get(name).ok_or(Errno::ENOENT)?;
        self.inode(new_parent)?.entries()?;
        let moving_dir = self.inode(ino)?.is_dir();
        if moving_dir && self.is_within(new_parent, ino) {
            return Err(Errno::EINVAL);
        }
        let replaced = self.inode(new_parent)?.entries()?.get(new_name).copied();
        if let Some(old) = replaced {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            may_replace(moving_dir, &self.inode(old)?.kind)?;
        }
        self.inode_mut(parent)?.remove_entry(name)?;
        self.inode_mut(new_parent)?.set_entry(new_name, ino)?;
        let moved = self.inode_mut(ino)?;
        moved.ctime = SystemTime::now();
        if let Kind::Dir { parent, .. } = &mut moved.kind {
            *parent = new_parent;
        }
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        Ok(())
    }

    /// Whether `dir` is `ancestor` or lies below it.
    fn is_within(&self, mut dir: u64, ancestor: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.inodes.get(&dir).map(|i| &i.kind) {
                Some(Kind::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    pub fn read(&mut self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let inode = self.inode_mut(ino)?;
        inode.atime = SystemTime::now();
        Ok(inode.contents_mut()?.read(offset, len))
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.contents_mut()?.write(offset, data);
        touch(inode);
        Ok(())
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.contents_mut()?.truncate(size);
        touch(inode);
        Ok(())
    }

    /// fallocate(2) of mode 0 (the file grows to cover the range, with zeros); with
    /// `keep_size`, nothing to do (memory is not reserved ahead).
    pub fn allocate(&mut self, ino: u64, end: u64, keep_size: bool) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        let contents = inode.contents_mut()?;
        if !keep_size && end > contents.size {
            contents.truncate(end);
            touch(inode);
        }
        Ok(())
    }

    /// chmod, chown, utimes.
    pub fn set_meta(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        owner: (Option<u32>, Option<u32>),
        times: (Option<SystemTime>, Option<SystemTime>),
    ) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        if let Some(perm) = perm {
            inode.perm = perm;
        }
        if let Some(uid) = owner.0 {
            inode.uid = uid;
        }
        if let Some(gid) = owner.1 {
            inode.gid = gid;
        }
        if let Some(atime) = times.0 {
            inode.atime = atime;
        }
        if let Some(mtime) = times.1 {
            inode.mtime = mtime;
        }
        inode.ctime = SystemTime::now();
        Ok(())
    }

    pub fn opened(&mut self, ino: u64) -> Result<(), Errno> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn released(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.collect(ino);
    }

    /// fsync or fdatasync of a file: its data and size are durable. Of a directory: its
    /// entries are.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        match &mut inode.kind {
            Kind::File { volatile, durable } => {
                *durable = volatile.clone();
                Ok(())
            }
            Kind::Dir { entries, durable, dirty, .. } => {
                // (what the name named durably before, what it names now), per changed name.
                let mut changes = Vec::new();
                for name in std::mem::take(dirty) {
                    let now = entries.get(&name).copied();
                    let before = match now {
                        Some(ino) => durable.insert(name, ino),
                        None => durable.remove(&name),
                    };
                    if before != now {
                        changes.push((before, now));
                    }
                }
                for &(_, now) in &changes {
                    if let Some(child) = now.and_then(|ino| self.inodes.get_mut(&ino)) {
                        child.durable_links += 1;
                    }
                }
                for (before, _) in changes {
                    if let Some(before) = before {
                        if let Some(inode) = self.inodes.get_mut(&before) {
                            inode.durable_links = inode.durable_links.saturating_sub(1);
                        }
                        self.collect(before);
                    }
                }
                Ok(())
            }
        }
    }

    /// Forgets an inode that nothing can reach any more (no name, no open handle, no durable
    /// entry), and what only it held on to.
    fn collect(&mut self, ino: u64) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            let dead = self.inodes.get(&ino).is_some_and(|i| {
                ino != ROOT && i.links == 0 && i.open == 0 && i.durable_links == 0
            });
            if !dead {
                continue;
            }
            if let Some(Inode { kind: Kind::Dir { durable, .. }, .. }) = self.inodes.remove(&ino) {
                for child in durable.into_values() {
                    if let Some(inode) = self.inodes.get_mut(&child) {
                        inode.durable_links = inode.durable_links.saturating_sub(1);
                    }
                    work.push(child);
                }
            }
        }
    }

    /// The power cut: the tree becomes what its durable state holds. Everything reachable
    /// from the root through durable entries comes back with its durable contents; the rest
    /// is gone. Inode numbers are kept (never reused), so a handle or a kernel inode of
    /// something gone finds nothing. With [`Cut::UnsyncedData`], every directory is taken as
    /// synced first: only file data and sizes go back.
    pub fn cut(&mut self, cut: Cut) {
        if cut == Cut::UnsyncedData {
            let dirs: Vec<u64> =
                self.inodes.iter().filter(|(_, i)| i.is_dir()).map(|(&ino, _)| ino).collect();
            for dir in dirs {
                // A directory of the tree: its sync cannot fail.
                let _ = self.sync(dir);
            }
        }
        self.cuts += 1;
        let mut report = CutReport::default();
        let mut old = std::mem::take(&mut self.inodes);
        let mut links: HashMap<u64, u32> = HashMap::from([(ROOT, 1)]);
        let mut work = vec![(ROOT, ROOT)];
        while let Some((ino, parent_ino)) = work.pop() {
            let Some(mut inode) = old.remove(&ino) else { continue };
            match &mut inode.kind {
                Kind::File { volatile, durable } => {
                    report.files_reverted += usize::from(!volatile.same_as(durable));
                    *volatile = durable.clone();
                }
                Kind::Dir { entries, durable, dirty, parent } => {
                    report.dirs_reverted += usize::from(!dirty.is_empty() && entries != durable);
                    *entries = durable.clone();
                    dirty.clear();
                    *parent = parent_ino;
                    for &child in durable.values() {
                        *links.entry(child).or_insert(0) += 1;
                        if !self.inodes.contains_key(&child) && old.contains_key(&child) {
                            work.push((child, ino));
                        }
                    }
                }
            }
            inode.open = 0;
            self.inodes.insert(ino, inode);
        }
        report.inodes_gone = old.len();
        self.last_cut = report;
        // A durable entry whose inode the tree no longer has cannot come back: drop it, so
        // that what is listed can be opened.
        let known: HashSet<u64> = self.inodes.keys().copied().collect();
        for inode in self.inodes.values_mut() {
            if let Kind::Dir { entries, durable, .. } = &mut inode.kind {
                entries.retain(|_, child| known.contains(child));
                durable.retain(|_, child| known.contains(child));
            }
        }
        for (ino, inode) in &mut self.inodes {
            let count = links.get(ino).copied().unwrap_or(0);
            inode.links = count;
            inode.durable_links = count;
        }
    }
}

fn touch(inode: &mut Inode) {
    let now = SystemTime::now();
    inode.mtime = now;
    inode.ctime = now;
}

/// Whether an inode of `kind` may go where a directory (`dir`) or a file is removed or renamed
/// over, as unlink(2), rmdir(2) and rename(2) say: a file for a file, an empty directory for a
/// directory.
fn may_replace(dir: bool, kind: &Kind) -> Result<(), Errno> {
    match (dir, kind) {
        (false, Kind::Dir { .. }) => Err(Errno::EISDIR),
        (true, Kind::File { .. }) => Err(Errno::ENOTDIR),
        (true, Kind::Dir { entries, .. }) if !entries.is_empty() => Err(Errno::ENOTEMPTY),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: (u32, u32) = (0, 0);

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn names(tree: &Tree, dir: u64) -> Vec<String> {
        let list = tree.list(dir).expect("list");
        list.into_iter().skip(2).map(|e| e.name.to_string_lossy().into_owned()).collect()
    }

    fn contents(tree: &mut Tree, ino: u64) -> Vec<u8> {
        tree.read(ino, 0, usize::MAX / 2).expect("read")
    }

    /// A new file `n` in `dir`: its inode.
    fn new_file(tree: &mut Tree, dir: u64, n: &str) -> u64 {
        tree.create(dir, name(n), 0o644, OWNER).expect("create").ino
    }

    /// A new directory `n` in `parent`: its inode.
    fn new_dir(tree: &mut Tree, parent: u64, n: &str) -> u64 {
        tree.mkdir(parent, name(n), 0o755, OWNER).expect("mkdir").ino
    }

    /// `data` written at the start of `ino` and fsynced.
    fn write_synced(tree: &mut Tree, ino: u64, data: &[u8]) {
        tree.write(ino, 0, data).expect("write");
        tree.sync(ino).expect("fsync");
    }

    #[test]
    fn an_unsynced_write_is_gone_after_a_cut_and_a_synced_one_stays() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        tree.sync(ROOT).expect("sync dir");
        write_synced(&mut tree, file, b"kept");
        tree.write(file, 4, b" and lost").expect("write");
        tree.write(file, 0, b"KEPT").expect("overwrite");
        assert_eq!(contents(&mut tree, file), b"KEPT and lost");
        tree.cut(Cut::Unsynced);
        assert_eq!(contents(&mut tree, file), b"kept");
        assert_eq!(tree.attr(file).expect("attr").size, 4);
        let report = CutReport { files_reverted: 1, dirs_reverted: 0, inodes_gone: 0 };
        assert_eq!(tree.last_cut(), report);
    }

    #[test]
    fn a_file_fsynced_but_not_its_directory_is_gone_after_a_cut() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "new");
        write_synced(&mut tree, file, b"data");
        tree.cut(Cut::Unsynced);
        assert!(names(&tree, ROOT).is_empty());
        assert_eq!(tree.attr(file).err(), Some(Errno::ENOENT));
        let report = CutReport { files_reverted: 0, dirs_reverted: 1, inodes_gone: 1 };
        assert_eq!(tree.last_cut(), report);
    }

    #[test]
    fn a_created_entry_whose_data_was_never_synced_comes_back_empty() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        tree.write(file, 0, b"lost").expect("write");
        tree.sync(ROOT).expect("sync dir");
        tree.cut(Cut::Unsynced);
        assert_eq!(names(&tree, ROOT), ["f"]);
        assert_eq!(contents(&mut tree, file), b"");
    }

    #[test]
    fn truncation_is_volatile_until_fsync_and_zeroes_the_tail() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        tree.sync(ROOT).expect("sync dir");
        tree.write(file, 0, &[7; 10_000]).expect("write");
        tree.sync(file).expect("fsync");
        tree.truncate(file, 5000).expect("truncate");
        tree.cut(Cut::Unsynced);
        assert_eq!(contents(&mut tree, file), vec![7; 10_000]);
        tree.truncate(file, 5000).expect("truncate");
        tree.truncate(file, 9000).expect("extend");
        let back = contents(&mut tree, file);
        assert_eq!(&back[..5000], &[7; 5000][..]);
        assert_eq!(&back[5000..], &[0; 4000][..], "the cut-off tail reads as zeros");
    }

    #[test]
    fn a_rename_is_volatile_until_both_directories_are_synced() {
        let mut tree = Tree::new();
        let a = new_dir(&mut tree, ROOT, "a");
        let b = new_dir(&mut tree, ROOT, "b");
        let file = new_file(&mut tree, a, "f");
        write_synced(&mut tree, file, b"x");
        for dir in [ROOT, a, b] {
            tree.sync(dir).expect("sync dir");
        }
        tree.rename(a, name("f"), b, name("g"), false).expect("rename");
        tree.cut(Cut::Unsynced);
        assert_eq!((names(&tree, a), names(&tree, b)), (vec!["f".to_string()], vec![]));

        tree.rename(a, name("f"), b, name("g"), false).expect("rename");
        tree.sync(b).expect("sync b");
        tree.cut(Cut::Unsynced);
        // Only the target's directory was synced: the file has both names now.
        assert_eq!(names(&tree, a), ["f"]);
        assert_eq!(names(&tree, b), ["g"]);
        assert_eq!(tree.attr(file).expect("attr").nlink, 2);
        assert_eq!(contents(&mut tree, file), b"x");
    }

    #[test]
    fn a_rename_over_a_file_replaces_it_and_a_cut_brings_the_old_one_back() {
        let mut tree = Tree::new();
        let old = new_file(&mut tree, ROOT, "grant");
        write_synced(&mut tree, old, b"1 a");
        tree.sync(ROOT).expect("sync dir");
        let new = new_file(&mut tree, ROOT, "grant.new");
        write_synced(&mut tree, new, b"2 b");
        tree.rename(ROOT, name("grant.new"), ROOT, name("grant"), false).expect("rename");
        assert_eq!(names(&tree, ROOT), ["grant"]);
        assert_eq!(tree.lookup(ROOT, name("grant")).expect("lookup").ino, new);
        tree.cut(Cut::Unsynced);
        assert_eq!(tree.lookup(ROOT, name("grant")).expect("lookup").ino, old);
        assert_eq!(contents(&mut tree, old), b"1 a");

        let new = new_file(&mut tree, ROOT, "grant.new");
        write_synced(&mut tree, new, b"2 b");
        tree.rename(ROOT, name("grant.new"), ROOT, name("grant"), false).expect("rename");
        tree.sync(ROOT).expect("sync dir");
        tree.cut(Cut::Unsynced);
        assert_eq!(names(&tree, ROOT), ["grant"]);
        assert_eq!(contents(&mut tree, new), b"2 b");
        assert_eq!(tree.attr(old).err(), Some(Errno::ENOENT), "the replaced file is gone");
    }

    #[test]
    fn rename_refuses_what_rename_2_refuses() {
        let mut tree = Tree::new();
        let d = new_dir(&mut tree, ROOT, "d");
        new_file(&mut tree, d, "f");
        new_file(&mut tree, ROOT, "g");
        let e = new_dir(&mut tree, d, "e");
        assert_eq!(tree.rename(ROOT, name("g"), ROOT, name("d"), false), Err(Errno::EISDIR));
        assert_eq!(tree.rename(ROOT, name("d"), d, name("x"), false), Err(Errno::EINVAL));
        assert_eq!(tree.rename(d, name("e"), ROOT, name("g"), false), Err(Errno::ENOTDIR));
        assert_eq!(tree.rename(ROOT, name("g"), d, name("f"), true), Err(Errno::EEXIST));
        tree.rename(d, name("e"), ROOT, name("e2"), false).expect("move a directory up");
        assert_eq!(tree.list(e).expect("list")[1].ino, ROOT, "its .. follows");
        assert_eq!(tree.remove(ROOT, name("d"), true), Err(Errno::ENOTEMPTY));
    }

    #[test]
    fn an_unlink_is_volatile_until_the_directory_is_synced() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        write_synced(&mut tree, file, b"body");
        tree.sync(ROOT).expect("sync dir");
        tree.remove(ROOT, name("f"), false).expect("unlink");
        tree.cut(Cut::Unsynced);
        assert_eq!(contents(&mut tree, file), b"body", "the unlinked file is back");
        tree.remove(ROOT, name("f"), false).expect("unlink");
        tree.sync(ROOT).expect("sync dir");
        assert_eq!(tree.attr(file).err(), Some(Errno::ENOENT), "and now forgotten");
        tree.cut(Cut::Unsynced);
        assert!(names(&tree, ROOT).is_empty());
    }

    #[test]
    fn a_directory_made_durable_comes_back_with_only_its_durable_entries() {
        let mut tree = Tree::new();
        let d = new_dir(&mut tree, ROOT, "d");
        tree.sync(ROOT).expect("sync root");
        new_file(&mut tree, d, "synced");
        tree.sync(d).expect("sync d");
        new_file(&mut tree, d, "unsynced");
        tree.cut(Cut::Unsynced);
        assert_eq!(names(&tree, d), ["synced"]);
    }

    #[test]
    fn a_sync_writes_only_the_changed_names_and_counts_links_right() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        new_file(&mut tree, ROOT, "other");
        tree.sync(ROOT).expect("sync dir");
        tree.rename(ROOT, name("f"), ROOT, name("g"), false).expect("rename");
        tree.rename(ROOT, name("g"), ROOT, name("f"), false).expect("and back");
        tree.link(file, ROOT, name("h")).expect("link");
        tree.sync(ROOT).expect("sync dir");
        tree.remove(ROOT, name("h"), false).expect("unlink");
        tree.cut(Cut::Unsynced);
        assert_eq!(names(&tree, ROOT), ["f", "h", "other"]);
        assert_eq!(tree.attr(file).expect("attr").nlink, 2);
        tree.remove(ROOT, name("f"), false).expect("unlink");
        tree.remove(ROOT, name("h"), false).expect("unlink");
        tree.sync(ROOT).expect("sync dir");
        assert_eq!(tree.attr(file).err(), Some(Errno::ENOENT), "no name, durable or not");
    }

    #[test]
    fn a_data_only_cut_keeps_every_directory_change_and_loses_unsynced_data() {
        let mut tree = Tree::new();
        let kept = new_file(&mut tree, ROOT, "kept");
        write_synced(&mut tree, kept, b"synced");
        tree.write(kept, 6, b", not synced").expect("write");
        let blob = new_file(&mut tree, ROOT, "blob");
        tree.write(blob, 0, b"never synced").expect("write");
        tree.rename(ROOT, name("kept"), ROOT, name("renamed"), false).expect("rename");
        tree.cut(Cut::UnsyncedData);
        assert_eq!(names(&tree, ROOT), ["blob", "renamed"]);
        assert_eq!(contents(&mut tree, kept), b"synced");
        assert_eq!(contents(&mut tree, blob), b"", "created, never synced: empty");
        let report = CutReport { files_reverted: 2, dirs_reverted: 0, inodes_gone: 0 };
        assert_eq!(tree.last_cut(), report);
    }

    #[test]
    fn pages_shared_with_the_durable_state_are_copied_on_write() {
        let mut tree = Tree::new();
        let file = new_file(&mut tree, ROOT, "f");
        tree.sync(ROOT).expect("sync dir");
        let data: Vec<u8> = (0..3 * PAGE + 100).map(|i| i as u8).collect();
        write_synced(&mut tree, file, &data);
        tree.write(file, PAGE as u64 + 10, b"changed").expect("write");
        tree.write(file, 10 * PAGE as u64, b"far").expect("write past the end");
        assert_eq!(tree.attr(file).expect("attr").size, 10 * PAGE as u64 + 3);
        let read = tree.read(file, 5 * PAGE as u64, 10).expect("read a hole");
        assert_eq!(read, vec![0; 10]);
        tree.cut(Cut::Unsynced);
        assert_eq!(contents(&mut tree, file), data);
    }
}
