//! Output buffers that are recycled instead of freed.
//!
//! A kernel that streams at memory speed spends as long again on a fresh
//! output: the operating system maps zeroed pages and faults them in one by
//! one on first write (measured here: 64 MiB of float32 → float8 codes take
//! 6.5 ms into a fresh buffer, 4.8 ms into a used one). Users convert many
//! tensors of a few sizes, so a [`Buffer`] goes back to a small process-wide
//! cache when it is dropped, and the next [`Buffer::new`] of about its size
//! takes it from there, already mapped.
//!
//! The cache keeps at most [`MAX_CACHED`] buffers of at least
//! [`MIN_CACHED_BYTES`] each, and at most `QUANTDRIFT_BUFFER_CACHE_MB`
//! mebibytes in all (default 512; 0 turns it off). A request takes a cached
//! buffer only if it wastes at most an eighth of it.

use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use crate::{CoreError, Result};

/// Buffers smaller than this are freed as usual: small allocations are
/// cheap and the allocator recycles them itself. Larger ones are not cheap
/// even below the allocator's own mapping threshold: glibc serves them from
/// the top of its heap and gives that back to the system as soon as they
/// are freed, so each call faults the pages in again (measured: the
/// half-MiB per-part arrays of an int4 quantization in groups of 128 of a
/// 4096×4096 matrix, ~250 faults and 1.5 ms of system time per
/// quantize-and-dequantize round, ~15% of it, with a 1 MiB floor here).
pub const MIN_CACHED_BYTES: usize = 128 << 10;

/// The most buffers the cache holds at once: a quantize-and-dequantize
/// round holds seven (codes, scales in float64 and float32, zero-points,
/// their widened copies, the output).
pub const MAX_CACHED: usize = 8;

/// Alignment of every allocation: enough for any element type, and no more
/// than malloc's own, so that a zeroed allocation is `calloc`, whose large
/// blocks are fresh mappings that need no explicit zeroing (a larger
/// alignment makes the allocator memset the whole block, one core touching
/// every page).
const ALIGN: usize = 16;

/// Alignment of the values inside a block: a cache line. The allocation
/// is [`SLACK`] bytes longer and the values start at its first line
/// boundary. A large calloc block starts 16 bytes into a page, and a
/// kernel writing whole lines with non-temporal stores then splits every
/// run of one part into a partial head and tail, written with plain stores
/// to lines that the streamed stores also write (measured: dequantizing
/// 16384×4096 int4 groups of 128 took 13–14 ms instead of 11.5 ms).
const LINE: usize = 64;

/// The extra bytes allocated to reach a [`LINE`] boundary from an
/// [`ALIGN`]-aligned start.
const SLACK: usize = LINE - ALIGN;

/// Element types a [`Buffer`] can hold: plain numbers, for which every bit
/// pattern is a value, so a recycled buffer's old contents are valid values.
///
/// # Safety
/// Implementors must be inhabited by every bit pattern of their size, with
/// no padding, no drop glue, and an alignment of at most 16.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

// SAFETY: integers and floats: every bit pattern is a value; alignment ≤ 8.
unsafe impl Plain for u8 {}
unsafe impl Plain for i8 {}
unsafe impl Plain for u16 {}
unsafe impl Plain for i16 {}
unsafe impl Plain for u32 {}
unsafe impl Plain for i32 {}
unsafe impl Plain for u64 {}
unsafe impl Plain for i64 {}
unsafe impl Plain for f32 {}
unsafe impl Plain for f64 {}

/// One allocation of `bytes` + [`SLACK`] bytes at `raw`, 16-byte aligned,
/// every byte initialised (zeroed when new, values of some [`Plain`] type
/// after); the `bytes` usable ones start at `ptr`, on a [`LINE`] boundary.
struct Block {
    raw: NonNull<u8>,
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: a Block is a uniquely owned heap allocation, like a Box<[u8]>.
unsafe impl Send for Block {}
// SAFETY: as above; &Block gives no access to the memory.
unsafe impl Sync for Block {}

impl Block {
    fn layout(bytes: usize) -> Layout {
        let total = bytes.checked_add(SLACK).expect("buffer size overflows");
        Layout::from_size_align(total, ALIGN).expect("buffer size overflows")
    }

    /// A zeroed block. Large ones are fresh mappings that are only paged in
    /// on first write; they ask Linux for 2 MiB pages before that happens.
    fn zeroed(bytes: usize) -> Block {
        if bytes == 0 {
            let ptr = NonNull::<u128>::dangling().cast(); // aligned to 16 = ALIGN
            return Block {
                raw: ptr,
                ptr,
                bytes: 0,
            };
        }
        let layout = Block::layout(bytes);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let raw = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let skip = (raw.as_ptr() as usize).next_multiple_of(LINE) - raw.as_ptr() as usize;
        debug_assert!(skip <= SLACK);
        // SAFETY: skip ≤ SLACK (raw is ALIGN-aligned), so ptr and the
        // `bytes` after it lie inside the allocation.
        let ptr = unsafe { NonNull::new_unchecked(raw.as_ptr().add(skip)) };
        advise_huge_pages(raw.as_ptr(), layout.size());
        Block { raw, ptr, bytes }
    }

    fn free(self) {
        if self.bytes != 0 {
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { alloc::dealloc(self.raw.as_ptr(), Block::layout(self.bytes)) };
        }
    }
}

struct Cache {
    blocks: Vec<Block>,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: Vec::new(),
    bytes: 0,
});

/// The cache's limit in bytes, from `QUANTDRIFT_BUFFER_CACHE_MB` (read once).
fn cache_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("QUANTDRIFT_BUFFER_CACHE_MB")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(512)
            .saturating_mul(1 << 20)
    })
}

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while holding the lock leaves the cache consistent (every
    // change is a single push or remove), so a poisoned lock is usable.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cached block of `bytes` to `bytes + bytes/8` bytes (the smallest), or
/// a fresh zeroed one.
fn take(bytes: usize) -> Block {
    if bytes >= MIN_CACHED_BYTES {
        let mut c = cache();
        let fit = c
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.bytes >= bytes && b.bytes - bytes <= bytes / 8)
            .min_by_key(|(_, b)| b.bytes)
            .map(|(i, _)| i);
        if let Some(i) = fit {
            let block = c.blocks.remove(i);
            c.bytes -= block.bytes;
            return block;
        }
    }
    Block::zeroed(bytes)
}

/// Keeps `block` for a later [`take`], evicting the oldest blocks beyond the
/// limits, or frees it.
fn give_back(block: Block) {
    let limit = cache_limit();
    if block.bytes < MIN_CACHED_BYTES || block.bytes > limit {
        return block.free();
    }
    let mut evicted = Vec::new();
    {
        let mut c = cache();
        c.bytes += block.bytes;
        c.blocks.push(block);
        while c.blocks.len() > MAX_CACHED || c.bytes > limit {
            let old = c.blocks.remove(0);
            c.bytes -= old.bytes;
            evicted.push(old);
        }
    }
    // Unmapping takes a while; not under the lock.
    evicted.into_iter().for_each(Block::free);
}

/// `len` float64 zeros, or [`CoreError::Memory`] naming `what` when the
/// allocation fails: for outputs whose size grows faster than the input's
/// (a K×K matrix), where `vec![0.0; n]` would abort the whole process.
/// Zeroed by `calloc`, so large blocks are fresh pages, not written twice.
pub fn zeroed_f64(len: usize, what: &str) -> Result<Vec<f64>> {
    let refuse = || {
        CoreError::Memory(format!(
            "not enough memory for {what}: {len} float64 values ({:.1} GB)",
            len as f64 * 8.0 / 1e9
        ))
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = Layout::array::<f64>(len).map_err(|_| refuse())?;
    // SAFETY: layout has a non-zero size.
    let ptr = unsafe { alloc::alloc_zeroed(layout) } as *mut f64;
    if ptr.is_null() {
        return Err(refuse());
    }
    // SAFETY: ptr was allocated by the global allocator with the layout of
    // `len` f64 (the layout Vec uses for that capacity), and all-zero bytes
    // are the f64 value 0.0.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Frees every cached buffer (for callers about to need the memory).
pub fn clear_cache() {
    let blocks = {
        let mut c = cache();
        c.bytes = 0;
        std::mem::take(&mut c.blocks)
    };
    blocks.into_iter().for_each(Block::free);
}

/// Bytes held by the cache now.
pub fn cached_bytes() -> usize {
    cache().bytes
}

/// `len` values of `T`, starting on a cache line, in an allocation that
/// returns to the cache when dropped. A new buffer's values are unspecified (zeros, or what
/// an earlier user of the memory left): kernels overwrite them.
pub struct Buffer<T: Plain> {
    block: Option<Block>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Plain> Buffer<T> {
    /// A buffer of `len` values, from the cache when one fits.
    pub fn new(len: usize) -> Buffer<T> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("buffer size overflows");
        Buffer {
            block: Some(take(bytes)),
            len,
            _values: PhantomData,
        }
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        let block = self.block.as_ref().expect("live buffer");
        // SAFETY: the block holds at least len·size_of::<T>() initialised
        // bytes, aligned to 16 or more ≥ align_of::<T>(), and every bit pattern is a
        // T (Plain); we own it, and &self forbids writes meanwhile.
        unsafe { std::slice::from_raw_parts(block.ptr.as_ptr().cast::<T>(), self.len) }
    }

    /// The values, to write.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let block = self.block.as_ref().expect("live buffer");
        // SAFETY: as in `as_slice`, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(block.ptr.as_ptr().cast::<T>(), self.len) }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Plain> Drop for Buffer<T> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            give_back(block);
        }
    }
}

impl<T: Plain> std::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Plain> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len).finish()
    }
}

/// Advises Linux to back the 2 MiB-aligned interior of `[ptr, ptr+bytes)`
/// with huge pages: with 4 KiB pages the first-write faults of a large
/// output cost more than the kernel that fills it. A hint: failure, or
/// another OS, leaves the memory as it was.
pub(crate) fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: i32 = 14;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let start = ptr as usize;
        let end = start + bytes;
        let lo = start.next_multiple_of(HUGE);
        let hi = end / HUGE * HUGE;
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the caller's allocation;
            // MADV_HUGEPAGE changes only how pages are backed, never their
            // contents, and its result is ignored because it is a hint.
            unsafe {
                madvise(lo as *mut std::ffi::c_void, hi - lo, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_f64_refuses_what_cannot_be_allocated() {
        assert_eq!(zeroed_f64(0, "x").unwrap(), Vec::<f64>::new());
        assert_eq!(zeroed_f64(3, "x").unwrap(), vec![0.0; 3]);
        // Past isize::MAX bytes (no layout), and 2^62 bytes (no mapping).
        // black_box: LLVM may elide an allocation it sees unused and assume
        // that it succeeded.
        for len in [usize::MAX, 1usize << 59] {
            match std::hint::black_box(zeroed_f64(std::hint::black_box(len), "the 7×7 KL matrix"))
            {
                Err(CoreError::Memory(m)) => {
                    assert!(m.contains("the 7×7 KL matrix") && m.contains("GB"), "{m}")
                }
                other => panic!("{:?}", other.map(|v| v.len())),
            }
        }
    }

    // One test touches the process-wide cache, so that parallel tests do
    // not race on its contents.
    #[test]
    fn buffers_are_recycled_within_the_limits() {
        clear_cache();
        let n = (MIN_CACHED_BYTES / 4) * 3;
        let mut a = Buffer::<f32>::new(n);
        a.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        let addr = a.as_ptr() as usize;
        assert_eq!(addr % LINE, 0);
        drop(a);
        assert_eq!(cached_bytes(), n * 4);
        // The same size again, viewed as another type, reuses the memory.
        let b = Buffer::<u32>::new(n);
        assert_eq!(b.as_ptr() as usize, addr);
        assert_eq!(b.len(), n);
        assert_eq!(cached_bytes(), 0);
        // Much smaller requests do not take a large block.
        drop(b);
        let c = Buffer::<u8>::new(MIN_CACHED_BYTES);
        assert_ne!(c.as_ptr() as usize, addr);
        drop(c);
        // At most MAX_CACHED blocks stay.
        let many: Vec<_> = (0..MAX_CACHED + 2)
            .map(|_| Buffer::<u8>::new(MIN_CACHED_BYTES))
            .collect();
        drop(many);
        assert!(cached_bytes() <= MAX_CACHED * (n * 4).max(MIN_CACHED_BYTES));
        // Small buffers are never cached; empty ones work.
        clear_cache();
        let small = Buffer::<u16>::new(100);
        assert_eq!(small.as_ptr() as usize % LINE, 0);
        drop(small);
        assert_eq!(cached_bytes(), 0);
        let e = Buffer::<f64>::new(0);
        assert!(e.is_empty() && e.as_slice().is_empty());
        drop(e);
        clear_cache();
        assert_eq!(cached_bytes(), 0);
    }
}
