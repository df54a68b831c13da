//! What the fuzz targets share: an allocator that turns an outsized allocation into a crash,
//! and the ways an input is cut into the pieces a socket might deliver.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::io::Write;

use relayd::proto::{BodyDecoder, DotStuffer};

/// The largest single allocation any target may make. Inputs are at most 64 KiB
/// (`-max_len` in scripts/fuzz.sh) and no parser needs more than a few times its input; an
/// allocation this large means a size was taken from the input (a length prefix, a count)
/// and trusted. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a
/// build without a sanitizer does not have, hence this check.
pub const MAX_ALLOCATION: usize = 4 * 1024 * 1024;

/// The system allocator, aborting on any allocation over [`MAX_ALLOCATION`]. An abort is a
/// crash to libFuzzer, which saves the input (a panic is not allowed to unwind out of an
/// allocator).
pub struct BoundedAllocator;

impl BoundedAllocator {
    fn check(size: usize) {
        // A panic's backtrace loads debug information in large pieces: that is the report of
        // a finding, not one.
        if size > MAX_ALLOCATION && !std::thread::panicking() {
            // No formatting: that could allocate, here of all places.
            let _ = std::io::stderr().write_all(b"fuzz: an allocation over MAX_ALLOCATION\n");
            std::process::abort();
        }
    }
}

// SAFETY: every method checks the size, then forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// Reads `data` with `read` cut three ways, asserting that the cuts do not matter, and returns
/// the result. The cuts: whole, one byte at a time, and pieces of 1 to 64 bytes whose lengths
/// come from a hash of the input. The input itself stays plain protocol text (the seeds are
/// real sessions and bodies, usable as they are with other tools); any mutation of it also
/// changes where the pseudo-random cuts fall.
pub fn same_however_split<T: PartialEq + Debug>(data: &[u8], read: impl Fn(&[&[u8]]) -> T) -> T {
    let whole = read(&[data]);
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(read(&bytes), whole, "read one byte at a time");
    let mut pieces = Vec::new();
    let mut state = fnv1a(data) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift64: cheap, and the same input always gives the same cuts.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let length = usize::try_from(state % 64).unwrap_or(0) + 1;
        let (piece, tail) = rest.split_at(length.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    assert_eq!(read(&pieces), whole, "read in pieces");
    whole
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The position of the first bare CR or bare LF in `content`, if any. Stored body content has
/// only whole CRLF line ends.
pub fn bare_line_end(content: &[u8]) -> Option<usize> {
    content.iter().enumerate().position(|(i, &byte)| match byte {
        b'\n' => i == 0 || content[i - 1] != b'\r',
        b'\r' => content.get(i + 1) != Some(&b'\n'),
        _ => false,
    })
}

/// What a next hop reads when we relay stored `content` over DATA: the content dot-stuffed as
/// the delivery client sends it (in two pieces, as it streams chunks), read back by our own
/// DATA reader. Panics unless the end of data is found exactly where the stuffer put it.
pub fn relayed(content: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::default();
    let (head, tail) = content.split_at(content.len() / 2);
    stuffer.stuff(head, &mut wire);
    stuffer.stuff(tail, &mut wire);
    stuffer.end(&mut wire);
    let mut again = Vec::new();
    let decoded = BodyDecoder::data().decode(&wire, &mut again);
    assert!(decoded.end && decoded.consumed == wire.len(), "the relayed end moved: {wire:?}");
    again
}
