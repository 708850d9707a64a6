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
        let small = Bytes::copy_of(&[1, 2, 3]);
        assert!(!small.in_huge_pages());
        assert_eq!(&small[..], &[1, 2, 3]);
        assert!(Bytes::copy_of(&[]).is_empty());
    }
}
