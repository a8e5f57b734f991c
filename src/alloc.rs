//! The process's allocator: the system's, asking Linux for transparent huge pages for large
//! blocks (the model's weights).
//!
//! Generating a token streams every weight from memory once. With 4 KB pages that is a TLB
//! miss every 4 KB; a 2 MB page covers 512 of them. Most distributions run THP in `madvise`
//! mode, where only memory marked with `madvise(MADV_HUGEPAGE)` gets huge pages, so large
//! blocks are marked here as they are allocated, before anything touches them (what is
//! already faulted in stays in small pages). BENCHMARKS.md has what it changes.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are marked: two huge pages, so each holds at least one whole.
const LARGE: usize = 4 << 20;

/// The huge page size on x86-64 and most aarch64 kernels.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// [`System`], with blocks of [`LARGE`] bytes or more marked for huge pages on Linux.
pub struct HugePages;

/// Marks the whole huge pages inside `[ptr, ptr + len)`.
#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: the range lies inside a block just allocated to the caller; MADV_HUGEPAGE
        // changes how its pages are backed, never their contents. A kernel without THP
        // refuses it, which changes nothing.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_ptr: *mut u8, _len: usize) {}

// SAFETY: every call is forwarded to `System` with its own arguments; `advise` only tells the
// kernel how to back memory the block already owns.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && layout.size() >= LARGE {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= LARGE {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() && new_size >= LARGE {
            advise(new, new_size);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_hold_what_is_written() {
        for size in [16, LARGE - 1, LARGE, 3 * LARGE + 12345] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: a non-zero layout; each pointer is freed once with its layout.
            unsafe {
                let zeroed = HugePages.alloc_zeroed(layout);
                assert!(!zeroed.is_null());
                let bytes = std::slice::from_raw_parts_mut(zeroed, size);
                assert!(bytes.iter().all(|&b| b == 0), "{size}");
                bytes.fill(7);
                let grown = HugePages.realloc(zeroed, layout, size * 2);
                assert!(!grown.is_null());
                let bytes = std::slice::from_raw_parts(grown, size);
                assert!(bytes.iter().all(|&b| b == 7), "{size}");
                HugePages.dealloc(grown, Layout::from_size_align(size * 2, 64).unwrap());
                let plain = HugePages.alloc(layout);
                assert!(!plain.is_null());
                let bytes = std::slice::from_raw_parts_mut(plain, size);
                bytes.fill(9);
                assert!(bytes.iter().all(|&b| b == 9), "{size}");
                HugePages.dealloc(plain, layout);
            }
        }
    }
}
