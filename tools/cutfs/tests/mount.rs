//! cutfs mounted for real: files written through the kernel with std::fs, the cut made through
//! the control file as a shell would (`echo cut > .cutfs`), and what survives read back.
//! Skipped, saying so, where /dev/fuse is absent.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// A mount on a fresh directory, or None (and a message) where FUSE is not available.
fn mounted() -> Option<(tempfile::TempDir, cutfs::Mount)> {
    if let Some(why) = cutfs::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = cutfs::Mount::new(dir.path()).expect("mount cutfs");
    Some((dir, mount))
}

/// The power cut, through the control file.
fn cut(root: &Path) {
    fs::write(root.join(cutfs::CONTROL_NAME), "cut\n").expect("write the control file");
}

fn sync_dir(dir: &Path) {
    File::open(dir).expect("open dir").sync_all().expect("fsync dir");
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept() {
    let Some((dir, _mount)) = mounted() else { return };
    let root = dir.path();
    let mut file = File::create(root.join("f")).expect("create");
    file.write_all(b"durable").expect("write");
    file.sync_data().expect("fdatasync");
    sync_dir(root);
    file.write_all(b" but not this").expect("write");
    drop(file);
    assert_eq!(fs::read(root.join("f")).expect("read"), b"durable but not this");
    cut(root);
    assert_eq!(fs::read(root.join("f")).expect("read after the cut"), b"durable");
    assert_eq!(fs::metadata(root.join("f")).expect("stat").len(), 7);
    let status = fs::read_to_string(root.join(cutfs::CONTROL_NAME)).expect("read control");
    assert_eq!(status, "cuts 1\nfiles_reverted 1\ndirs_reverted 0\ninodes_gone 0\n");
}

#[test]
fn a_file_created_and_fsynced_without_its_directory_is_gone() {
    let Some((dir, mount)) = mounted() else { return };
    let root = dir.path();
    fs::create_dir(root.join("d")).expect("mkdir");
    sync_dir(root);
    let mut file = File::create(root.join("d/new")).expect("create");
    file.write_all(b"data").expect("write");
    file.sync_all().expect("fsync");
    mount.cut(cutfs::Cut::Unsynced).expect("cut");
    assert!(root.join("d").is_dir(), "the directory's own entry was synced");
    assert!(!root.join("d/new").exists(), "the file's entry was not");
    assert_eq!(fs::read_dir(root.join("d")).expect("list").count(), 0);
}

#[test]
fn a_rename_over_a_file_is_durable_only_with_its_directory() {
    let Some((dir, mount)) = mounted() else { return };
    let root = dir.path();
    let replace = |text: &str| {
        let mut fresh = File::create(root.join("grant.new")).expect("create");
        fresh.write_all(text.as_bytes()).expect("write");
        fresh.sync_all().expect("fsync");
        fs::rename(root.join("grant.new"), root.join("grant")).expect("rename");
    };
    replace("1 a");
    sync_dir(root);
    replace("2 b");
    assert_eq!(fs::read_to_string(root.join("grant")).expect("read"), "2 b");
    mount.cut(cutfs::Cut::Unsynced).expect("cut");
    assert_eq!(fs::read_to_string(root.join("grant")).expect("read"), "1 a");
    replace("2 b");
    sync_dir(root);
    mount.cut(cutfs::Cut::Unsynced).expect("cut");
    assert_eq!(fs::read_to_string(root.join("grant")).expect("read"), "2 b");
    let names: Vec<_> =
        fs::read_dir(root).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["grant"], "the control file is not listed, grant.new is gone");
}

#[test]
fn a_data_only_cut_keeps_the_new_file_and_empties_it() {
    let Some((dir, mount)) = mounted() else { return };
    let root = dir.path();
    fs::write(root.join("blob"), "never synced").expect("write");
    mount.cut(cutfs::Cut::UnsyncedData).expect("cut");
    assert_eq!(fs::read(root.join("blob")).expect("read"), b"");
}

#[test]
fn a_handle_opened_before_a_cut_fails_and_a_new_one_works() {
    let Some((dir, mount)) = mounted() else { return };
    let root = dir.path();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(root.join("f"))
        .expect("create");
    file.write_all(&[5; 100_000]).expect("write");
    file.sync_all().expect("fsync");
    sync_dir(root);
    mount.cut(cutfs::Cut::Unsynced).expect("cut");
    assert!(file.write_all(b"late").is_err(), "a write through a stale handle");
    assert!(file.sync_all().is_err(), "an fsync through a stale handle");
    let mut again = File::open(root.join("f")).expect("reopen");
    again.seek(SeekFrom::Start(99_990)).expect("seek");
    let mut tail = Vec::new();
    again.read_to_end(&mut tail).expect("read");
    assert_eq!(tail, [5; 10]);
}

#[test]
fn locks_truncation_and_fallocate_work_as_a_storage_engine_uses_them() {
    let Some((dir, mount)) = mounted() else { return };
    let root = dir.path();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(root.join("db"))
        .expect("create");
    // An exclusive lock, and a second one refused (flock(2), as storage engines take theirs).
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let other = File::open(root.join("db")).expect("open again");
    assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, -1);
    // And byte-range locks on open file descriptions (fcntl F_OFD_SETLK, as redb 4 takes).
    let range_lock = |file: &File| {
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        (lock.l_start, lock.l_len) = (100, 10);
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) }
    };
    assert_eq!(range_lock(&file), 0, "a range lock");
    let third = OpenOptions::new().write(true).open(root.join("db")).expect("open again");
    assert_eq!(range_lock(&third), -1, "the same range, locked by another description");
    assert_eq!(unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 1 << 20) }, 0, "fallocate");
    assert_eq!(file.metadata().expect("stat").len(), 1 << 20);
    file.set_len(4096).expect("ftruncate");
    file.sync_all().expect("fsync");
    sync_dir(root);
    file.set_len(0).expect("ftruncate");
    mount.cut(cutfs::Cut::Unsynced).expect("cut");
    assert_eq!(fs::metadata(root.join("db")).expect("stat").len(), 4096);
    let mut statfs: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).expect("path");
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut statfs) }, 0);
    assert!(statfs.f_bavail * statfs.f_frsize > 100 << 30, "plenty of room reported");
}
