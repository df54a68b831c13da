//! `cutfs MOUNTPOINT`: mounts an empty cutfs there and serves it in the foreground until it is
//! unmounted (`umount MOUNTPOINT`). `echo cut > MOUNTPOINT/.cutfs` is the power cut.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), None) = (args.next(), args.next()) else {
        eprintln!("usage: cutfs MOUNTPOINT");
        return ExitCode::from(2);
    };
    if let Some(why) = cutfs::unavailable() {
        eprintln!("cutfs: {why}");
        return ExitCode::FAILURE;
    }
    let mountpoint = PathBuf::from(mountpoint);
    match cutfs::serve(&mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cutfs: {}: {e}", mountpoint.display());
            ExitCode::FAILURE
        }
    }
}
