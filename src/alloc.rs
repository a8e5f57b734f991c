//! The process's allocator: the system's, asking Linux for transparent huge pages for large
//! blocks (the model's weights).
//!
//! Generating a token streams every weight from memory once. With 4 KB pages that is a TLB
//! miss every 4 KB; a 2 MB page covers 512 of them. Most distributions run THP in `madvise`
//! mode, where only memory marked with `madvise(MADV_HUGEPAGE)` gets huge pages, so large
//! blocks are marked here as they are allocated, before anything touches them (what is
//! already faulted in stays in small pages). BENCHMARKS.md has what it changes.
//!
//! Large blocks are also aligned to a cache line. glibc serves them from `mmap` with its
//! 16-byte header in front, so every 64-byte load of a weight row straddled two lines.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are marked: two huge pages, so each holds at least one whole.
const LARGE: usize = 4 << 20;

/// The alignment of large blocks: a cache line, so that the kernels' 64-byte loads each read
/// one.
const LINE: usize = 64;

/// The layout a block of `layout` is allocated with.
fn layout_of(layout: Layout) -> Layout {
    if layout.size() < LARGE {
        return layout;
    }
    // Cannot fail: `LINE` is a power of two and a size of `LARGE` or more is far from
    // `isize::MAX` once rounded up to it.
    layout.align_to(LINE).unwrap_or(layout)
}

/// The huge page size on x86-64 and most aarch64 kernels.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// [`System`], with blocks of [`LARGE`] bytes or more aligned to a cache line and marked for
/// huge pages on Linux.
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

// SAFETY: every call is forwarded to `System` with `layout_of` its layout, the same function
// of size and alignment at allocation and release, so each block is freed as it was
// allocated; `advise` only tells the kernel how to back memory the block already owns.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let layout = layout_of(layout);
        // SAFETY: `layout_of` keeps the size and at least the alignment.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && layout.size() >= LARGE {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let layout = layout_of(layout);
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= LARGE {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout_of(layout)` (the caller passes the layout
        // it was allocated or last reallocated with).
        unsafe { System.dealloc(ptr, layout_of(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout_of(layout);
        // SAFETY: the caller vouches that `new_size` with `layout`'s alignment is a layout.
        let new = layout_of(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        if new.align() == old.align() {
            // SAFETY: `ptr` was allocated with `old`; the alignment stays.
            let grown = unsafe { System.realloc(ptr, old, new_size) };
            if !grown.is_null() && new_size >= LARGE {
                advise(grown, new_size);
            }
            return grown;
        }
        // Across `LARGE` the alignment changes, which `System.realloc` cannot do: a new block,
        // the bytes both hold copied, the old one freed.
        // SAFETY: `new_size` is not zero (the caller's side of `realloc`'s contract).
        let moved = unsafe { self.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap; `ptr` was
            // allocated with `old`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_hold_what_is_written() {
        // Alignment 4 as a `Vec<f32>` of weights asks; 64 as a caller might.
        for align in [4, 64] {
            for size in [16, LARGE - 1, LARGE, 3 * LARGE + 12345] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let aligned = |ptr: *mut u8, size: usize| {
                    let line = if size >= LARGE { LINE } else { align };
                    assert_eq!(ptr as usize % line, 0, "{size} bytes, align {align}");
                };
                // SAFETY: a non-zero layout; each pointer is freed once with its layout.
                unsafe {
                    let zeroed = HugePages.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    aligned(zeroed, size);
                    let bytes = std::slice::from_raw_parts_mut(zeroed, size);
                    assert!(bytes.iter().all(|&b| b == 0), "{size}");
                    bytes.fill(7);
                    // From below `LARGE` to above it: the block moves to a line's alignment.
                    let grown = HugePages.realloc(zeroed, layout, size * 2);
                    assert!(!grown.is_null());
                    aligned(grown, size * 2);
                    let bytes = std::slice::from_raw_parts(grown, size);
                    assert!(bytes.iter().all(|&b| b == 7), "{size}");
                    // And back down.
                    let grown_layout = Layout::from_size_align(size * 2, align).unwrap();
                    let shrunk = HugePages.realloc(grown, grown_layout, size / 2);
                    assert!(!shrunk.is_null());
                    aligned(shrunk, size / 2);
                    let bytes = std::slice::from_raw_parts(shrunk, size / 2);
                    assert!(bytes.iter().all(|&b| b == 7), "{size}");
                    HugePages.dealloc(shrunk, Layout::from_size_align(size / 2, align).unwrap());
                    let plain = HugePages.alloc(layout);
                    assert!(!plain.is_null());
                    aligned(plain, size);
                    let bytes = std::slice::from_raw_parts_mut(plain, size);
                    bytes.fill(9);
                    assert!(bytes.iter().all(|&b| b == 9), "{size}");
                    HugePages.dealloc(plain, layout);
                }
            }
        }
    }
}
