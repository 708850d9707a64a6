//! Weight memory in transparent huge pages. A decode step streams every weight
//! matrix once (~92 MiB for the default model, more than the last-level cache)
//! and through 4 KiB pages that costs a TLB miss every 4 KiB and stops the
//! hardware prefetcher at every page boundary: on the reference machine, with
//! THP in its common `madvise` mode, decode ran ~25 % faster once the weights
//! sat in 2 MiB pages. An operator should not have to change a system setting
//! for that, so the weights ask for huge pages themselves.
//!
//! [`Bytes::copy_of`] places a matrix's bytes in a shared anonymous mapping
//! (a *region*) aligned to 2 MiB and advised `MADV_HUGEPAGE`: a bump allocator,
//! each matrix 64-byte aligned, so a model's small matrices share huge pages.
//! A region lives as long as any matrix in it (an `Arc`); the allocator keeps
//! only a weak reference to the region it is filling, so dropping a model frees
//! its regions. Where the mapping fails, on other systems, for small matrices,
//! or with `TENZRO_CPU_HUGEPAGES=off` (read once), the bytes stay in a `Vec`.

use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A huge page (x86-64 and aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;
/// Size of a new region unless one matrix needs more.
const REGION: usize = 32 << 20;
/// Alignment of each matrix in a region (a cache line).
const ALIGN: usize = 64;
/// Matrices smaller than this stay on the heap (tests build thousands).
const MIN_BYTES: usize = 16 << 10;

/// A weight matrix's bytes, read-only once made.
#[derive(Debug)]
pub struct Bytes(Inner);

#[derive(Debug)]
enum Inner {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Mapped {
        region: Arc<Region>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    /// A copy of `data`, in a huge-page region where one can be had.
    pub fn copy_of(data: &[u8]) -> Bytes {
        #[cfg(target_os = "linux")]
        if data.len() >= MIN_BYTES
            && enabled()
            && let Some(b) = region::place(data)
        {
            return b;
        }
        Bytes(Inner::Heap(data.to_vec()))
    }

    /// `data` itself, on the heap.
    pub fn heap(data: Vec<u8>) -> Bytes {
        Bytes(Inner::Heap(data))
    }

    /// Whether these bytes sit in a huge-page region (else on the heap).
    pub fn in_huge_pages(&self) -> bool {
        !matches!(self.0, Inner::Heap(_))
    }
}

impl Clone for Bytes {
    fn clone(&self) -> Bytes {
        match &self.0 {
            Inner::Heap(v) => Bytes(Inner::Heap(v.clone())),
            #[cfg(target_os = "linux")]
            Inner::Mapped { region, start, len } => Bytes(Inner::Mapped {
                region: region.clone(),
                start: *start,
                len: *len,
            }),
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Inner::Mapped { region, start, len } => region.slice(*start, *len),
        }
    }
}

/// A zeroed, growable-by-replacement f32 buffer read every step (a sequence's
/// KV cache): in its own huge-page mapping from [`F32Buf::HUGE_FROM`] bytes up,
/// else a `Vec`.
#[derive(Debug, Default)]
pub struct F32Buf(F32Inner);

#[derive(Debug, Default)]
enum F32Inner {
    #[default]
    Empty,
    Heap(Vec<f32>),
    #[cfg(target_os = "linux")]
    Mapped(region::F32Map),
}

impl F32Buf {
    /// Buffers from this size up get their own huge-page mapping.
    pub const HUGE_FROM: usize = HUGE;

    /// `n` zeros.
    pub fn zeroed(n: usize) -> F32Buf {
        if n == 0 {
            return F32Buf(F32Inner::Empty);
        }
        #[cfg(target_os = "linux")]
        if n * 4 >= Self::HUGE_FROM
            && enabled()
            && let Some(m) = region::F32Map::zeroed(n)
        {
            return F32Buf(F32Inner::Mapped(m));
        }
        F32Buf(F32Inner::Heap(vec![0f32; n]))
    }

    /// Whether the values sit in a huge-page mapping.
    pub fn in_huge_pages(&self) -> bool {
        !matches!(self.0, F32Inner::Heap(_) | F32Inner::Empty)
    }
}

impl Clone for F32Buf {
    fn clone(&self) -> F32Buf {
        let mut c = F32Buf::zeroed(self.len());
        c.copy_from_slice(self);
        c
    }
}

impl Deref for F32Buf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.0 {
            F32Inner::Empty => &[],
            F32Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            F32Inner::Mapped(m) => m.as_slice(),
        }
    }
}

impl std::ops::DerefMut for F32Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.0 {
            F32Inner::Empty => &mut [],
            F32Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            F32Inner::Mapped(m) => m.as_mut_slice(),
        }
    }
}

/// Huge-page regions unless `TENZRO_CPU_HUGEPAGES` is `off` or `0`.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("TENZRO_CPU_HUGEPAGES").is_ok_and(|v| v == "off" || v == "0"))
}

#[cfg(target_os = "linux")]
use region::Region;

#[cfg(target_os = "linux")]
mod region {
    use super::*;
    use memmap2::{Advice, MmapMut, MmapRaw};

    /// One anonymous mapping; `base` is its first 2 MiB-aligned byte and `cap`
    /// the bytes usable from there.
    #[derive(Debug)]
    pub(super) struct Region {
        map: MmapRaw,
        base: usize,
        cap: usize,
    }

    // SAFETY: a region's bytes are written only by `place`, each range once,
    // under the allocator's lock and before the `Bytes` naming that range exists;
    // afterwards every access is a read. Sharing the region between threads is
    // then sharing immutable memory.
    unsafe impl Send for Region {}
    // SAFETY: as for `Send`: no range is written once any thread can read it.
    unsafe impl Sync for Region {}

    impl Region {
        fn new(need: usize) -> Option<Region> {
            let cap = need.max(REGION).next_multiple_of(HUGE);
            // One huge page more, so a 2 MiB-aligned start fits inside.
            let map = MmapMut::map_anon(cap + HUGE).ok()?;
            let base = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
            // Advice only: without THP the region is still plain memory.
            let _ = map.advise_range(Advice::HugePage, base, cap);
            Some(Region {
                map: MmapRaw::from(map),
                base,
                cap,
            })
        }

        pub(super) fn slice(&self, start: usize, len: usize) -> &[u8] {
            assert!(start + len <= self.cap, "a region slice past its end");
            // SAFETY: `base + start + len` is within the mapping (checked above
            // and in `new`), which lives as long as `self`; the range was filled
            // before this `Bytes` was made and is never written again.
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.base + start), len) }
        }

        /// Copy `data` to `start` (a range no `Bytes` names yet).
        fn fill(&self, start: usize, data: &[u8]) {
            assert!(
                start + data.len() <= self.cap,
                "a region write past its end"
            );
            // SAFETY: in bounds as checked; the range is reserved for this call
            // by the allocator's bump pointer, so nothing reads or writes it
            // concurrently, and `data` is not inside a region range being written.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.map.as_mut_ptr().add(self.base + start),
                    data.len(),
                )
            };
        }
    }

    /// `n` f32s in their own mapping, 2 MiB-aligned and advised `MADV_HUGEPAGE`.
    /// Dropped, the mapping is kept for the next buffer ([`KEEP_BYTES`]).
    #[derive(Debug)]
    pub(super) struct F32Map {
        /// Always `Some` until dropped.
        map: Option<MmapMut>,
        base: usize,
        n: usize,
    }

    /// Mappings of dropped buffers kept for the next ones, in bytes at most. A
    /// fresh mapping's pages are faulted in and zeroed by the kernel on first
    /// touch, which on the reference VM ran at a few hundred MB/s: a KV cache
    /// growing from 64 to 128 positions (6 MiB for the default model) stalled
    /// every stream's step by tens of milliseconds, ~10 % of an 8-stream run's
    /// samples. A kept mapping is only cleared, at memory speed. The cost is up to
    /// this much resident memory the process does not give back.
    pub(super) const KEEP_BYTES: usize = 64 << 20;

    #[derive(Default)]
    struct Kept {
        maps: Vec<MmapMut>,
        bytes: usize,
    }

    static KEPT: Mutex<Kept> = Mutex::new(Kept {
        maps: Vec::new(),
        bytes: 0,
    });

    fn kept() -> std::sync::MutexGuard<'static, Kept> {
        // A list of mappings is consistent after any panic: keep using it.
        KEPT.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first 2 MiB-aligned byte of `map`.
    fn aligned_base(map: &MmapMut) -> usize {
        (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize
    }

    /// Bytes kept for later buffers.
    #[cfg(test)]
    pub(super) fn kept_bytes() -> usize {
        kept().bytes
    }

    impl F32Map {
        pub(super) fn zeroed(n: usize) -> Option<F32Map> {
            let bytes = n.checked_mul(4)?.next_multiple_of(HUGE);
            let total = bytes.checked_add(HUGE)?;
            if let Some(mut m) = Self::reuse(n, total) {
                m.as_mut_slice().fill(0.0);
                return Some(m);
            }
            let map = MmapMut::map_anon(total).ok()?;
            let base = aligned_base(&map);
            let _ = map.advise_range(Advice::HugePage, base, bytes);
            Some(F32Map {
                map: Some(map),
                base,
                n,
            })
        }

        /// The smallest kept mapping that holds `n` f32s from its aligned base
        /// and is not over twice the `total` bytes a new one would take.
        fn reuse(n: usize, total: usize) -> Option<F32Map> {
            let mut kept = kept();
            let fits = |m: &MmapMut| m.len() - aligned_base(m) >= 4 * n && m.len() <= 2 * total;
            let (i, _) = kept
                .maps
                .iter()
                .enumerate()
                .filter(|(_, m)| fits(m))
                .min_by_key(|(_, m)| m.len())?;
            let map = kept.maps.swap_remove(i);
            kept.bytes -= map.len();
            Some(F32Map {
                base: aligned_base(&map),
                map: Some(map),
                n,
            })
        }

        pub(super) fn as_slice(&self) -> &[f32] {
            let Some(map) = &self.map else { return &[] };
            // SAFETY: `base` is 2 MiB-aligned (so f32-aligned) and `base + 4n`
            // is within the mapping (`zeroed` mapped that much and more, `reuse`
            // checked it); an anonymous mapping starts zeroed, a kept one was
            // cleared, and every bit pattern is an f32. The borrow of `self`
            // keeps the mapping alive and unaliased.
            unsafe { std::slice::from_raw_parts(map.as_ptr().add(self.base).cast(), self.n) }
        }

        pub(super) fn as_mut_slice(&mut self) -> &mut [f32] {
            let Some(map) = &mut self.map else {
                return &mut [];
            };
            // SAFETY: as `as_slice`; `&mut self` makes this the only borrow.
            unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().add(self.base).cast(), self.n)
            }
        }
    }

    impl Drop for F32Map {
        fn drop(&mut self) {
            let Some(map) = self.map.take() else { return };
            let mut kept = kept();
            if kept.bytes + map.len() <= KEEP_BYTES {
                kept.bytes += map.len();
                kept.maps.push(map);
            }
        }
    }

    /// The region being filled and its first free byte.
    struct Open {
        region: Weak<Region>,
        used: usize,
    }

    static OPEN: Mutex<Option<Open>> = Mutex::new(None);

    /// `data` copied into the open region, or a new one; `None` when no
    /// mapping can be had.
    pub(super) fn place(data: &[u8]) -> Option<Bytes> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        let len = data.len();
        let current = open
            .as_ref()
            .and_then(|o| Some((o.region.upgrade()?, o.used.next_multiple_of(ALIGN))))
            .filter(|(r, at)| at + len <= r.cap);
        let (region, start) = match current {
            Some(c) => c,
            None => {
                let r = Arc::new(Region::new(len)?);
                // Keep filling whichever region has more room left.
                let left = |o: &Open| o.region.upgrade().map_or(0, |r| r.cap - o.used.min(r.cap));
                if open.as_ref().is_none_or(|o| left(o) < r.cap - len) {
                    *open = Some(Open {
                        region: Arc::downgrade(&r),
                        used: len,
                    });
                }
                let placed = Bytes(Inner::Mapped {
                    region: r.clone(),
                    start: 0,
                    len,
                });
                r.fill(0, data);
                return Some(placed);
            }
        };
        if let Some(o) = open.as_mut() {
            o.used = start + len;
        }
        region.fill(start, data);
        Some(Bytes(Inner::Mapped { region, start, len }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_are_aligned_and_hold_their_bytes() {
        let sizes = [
            MIN_BYTES,
            70_000,
            1 << 20,
            3 << 20,
            MIN_BYTES + 3,
            REGION + 5,
        ];
        let made: Vec<(Vec<u8>, Bytes)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7) as u8).collect();
                let b = Bytes::copy_of(&data);
                (data, b)
            })
            .collect();
        for (data, b) in &made {
            assert_eq!(&b[..], &data[..]);
            if cfg!(target_os = "linux") && enabled() {
                assert!(b.in_huge_pages(), "{} bytes on the heap", data.len());
                assert_eq!(b.as_ptr() as usize % ALIGN, 0, "{} bytes", data.len());
            }
            assert_eq!(&b.clone()[..], &data[..]);
        }
        let mut kv = F32Buf::zeroed(F32Buf::HUGE_FROM / 4 + 3);
        assert!(kv.iter().all(|&v| v == 0.0));
        kv[5] = 1.5;
        let last = kv.len() - 1;
        kv[last] = -2.0;
        let copy = kv.clone();
        assert_eq!((copy[5], copy[last], copy.len()), (1.5, -2.0, kv.len()));
        if cfg!(target_os = "linux") && enabled() {
            assert!(kv.in_huge_pages() && copy.in_huge_pages());
            assert_eq!(kv.as_ptr() as usize % HUGE, 0);
        }
        assert!(!F32Buf::zeroed(10).in_huge_pages());
        assert_eq!(F32Buf::zeroed(0).len(), 0);
        let small = Bytes::copy_of(&[1, 2, 3]);
        assert!(!small.in_huge_pages());
        assert_eq!(&small[..], &[1, 2, 3]);
        assert!(Bytes::copy_of(&[]).is_empty());
    }

    /// A buffer made after another was dropped (whose mapping may be handed on)
    /// holds zeros however the other was written, at every size around the
    /// kept mappings' limits; the kept bytes stay within their bound.
    #[test]
    fn buffers_on_kept_mappings_start_zeroed() {
        for n in [
            F32Buf::HUGE_FROM / 4,
            F32Buf::HUGE_FROM / 4 + 1,
            3 << 20,
            5 << 19,
        ] {
            let mut first = F32Buf::zeroed(n);
            first.fill(7.0);
            drop(first);
            for m in [n, n - 1, n / 2 + 1] {
                let mut again = F32Buf::zeroed(m);
                assert_eq!(again.len(), m);
                assert!(again.iter().all(|&v| v == 0.0), "{n} then {m}");
                again.fill(3.0);
            }
            #[cfg(target_os = "linux")]
            assert!(region::kept_bytes() <= region::KEEP_BYTES);
        }
    }
}
