//! The io_uring path's receive buffers: one allocation cut into `count` buffers, each handed out
//! as a [`Lease`], the single token that grants access to it.
//!
//! The buffers are registered with the writer's io_uring once, at start, so they must neither
//! move nor be freed while it exists; they are shared by the receiver threads (which fill them)
//! and the writer thread (which writes them to the ring). Ownership moves with the lease: a
//! receiver holds it while reading and checking a frame, the channel to the writer holds it,
//! the writer holds it while the frame is parked, the writer's in-flight table holds it while a
//! `WRITE_FIXED` reads from it (the kernel's turn: nobody in user space touches it until the
//! completion), and the [`FreeList`] holds it in between. Exactly one lease exists per buffer
//! and leases cannot be cloned, so two parties can never touch one buffer at once; the pool's
//! memory lives as long as the last `Arc` on it (the writer and every receiver hold one).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::protocol::frame::FRAME_HEADER_BLOCK_BYTES;

/// The alignment of every buffer (`O_DIRECT` needs the logical block size; 4096 covers it).
const BUFFER_ALIGNMENT: usize = FRAME_HEADER_BLOCK_BYTES;

/// `count` buffers of `buffer_bytes` each, 4096-aligned, zeroed, in one allocation that never
/// moves.
pub(crate) struct BufferPool {
    base: NonNull<u8>,
    layout: Layout,
    buffer_bytes: usize,
    count: usize,
}

// SAFETY: the pool is plain memory; every access to a buffer goes through the one `Lease` for
// it (`bytes_mut`), which is `Send` but not `Clone`, so at most one thread can reach
// a buffer at a time; the pool itself mutates nothing after construction.
unsafe impl Send for BufferPool {}
// SAFETY: as above: shared references to the pool give access to a buffer only through an
// exclusive borrow of its lease, so the borrow rules on leases are the borrow rules on buffers.
unsafe impl Sync for BufferPool {}

/// The right to use one buffer of one pool. Not `Clone`: holding it is owning the buffer.
#[derive(Debug)]
pub(crate) struct Lease {
    index: usize,
    /// The pool's base address, to catch a lease used with another pool.
    pool: usize,
}

impl Lease {
    /// The buffer's index, which is also its registered index in the writer's io_uring.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl BufferPool {
    /// Allocates the pool and returns it with the one lease of each buffer.
    pub(crate) fn new(count: usize, buffer_bytes: usize) -> (BufferPool, Vec<Lease>) {
        assert!(count > 0, "a pool holds at least one buffer");
        assert!(buffer_bytes > 0, "buffers hold at least one block");
        assert!(buffer_bytes.is_multiple_of(BUFFER_ALIGNMENT), "buffers are whole blocks");
        assert!(count <= usize::from(u16::MAX), "registered buffer indexes are 16-bit");
        let total_bytes = count.checked_mul(buffer_bytes).expect("pool size fits in memory");
        let layout = Layout::from_size_align(total_bytes, BUFFER_ALIGNMENT).expect("valid pool layout");
        // SAFETY: `layout` has a non-zero size (both factors are non-zero, asserted above).
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(base) else { std::alloc::handle_alloc_error(layout) };
        let pool = BufferPool { base, layout, buffer_bytes, count };
        let leases = (0..count).map(|index| Lease { index, pool: base.as_ptr() as usize }).collect();
        (pool, leases)
    }

    /// Number of buffers.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes per buffer.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Each buffer as an iovec, in index order, for `io_uring_register(REGISTER_BUFFERS)`.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|index| libc::iovec { iov_base: self.start(index).cast(), iov_len: self.buffer_bytes })
            .collect()
    }

    /// The leased buffer's bytes, mutably.
    pub(crate) fn bytes_mut<'a>(&'a self, lease: &'a mut Lease) -> &'a mut [u8] {
        self.check(lease);
        // SAFETY: the range lies inside the allocation (index < count), which lives as long as
        // `self`; the lease is the only way to reach this buffer and it is borrowed exclusively
        // for the returned lifetime, so no other reference to these bytes exists, and no
        // operation in flight uses them (a lease in the writer's in-flight table is not lent
        // out until its completion).
        unsafe { std::slice::from_raw_parts_mut(self.start(lease.index), self.buffer_bytes) }
    }

    fn check(&self, lease: &Lease) {
        assert_eq!(lease.pool, self.base.as_ptr() as usize, "a lease of another pool");
        assert!(lease.index < self.count, "lease index {} of {}", lease.index, self.count);
    }

    fn start(&self, index: usize) -> *mut u8 {
        assert!(index < self.count);
        // SAFETY: `index * buffer_bytes < count * buffer_bytes`, the allocation's size.
        unsafe { self.base.as_ptr().add(index * self.buffer_bytes) }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The pool is dropped only when the last
        // `Arc` on it goes: after the writer dropped its io_uring (which unregisters the
        // buffers) and after every receiver ended, so no lease is in use.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// The leases of buffers nobody uses, shared by the receivers (which wait for one before reading
/// a frame: that is the back-pressure) and the writer (which returns them, and takes one for a
/// metadata record). Holds at most the pool's `count` leases, preallocated.
pub(crate) struct FreeList {
    leases: Mutex<Vec<Lease>>,
    returned: Condvar,
    capacity: usize,
}

impl FreeList {
    /// A free list holding every lease of a pool.
    pub(crate) fn new(leases: Vec<Lease>) -> FreeList {
        let capacity = leases.len();
        let mut all = Vec::with_capacity(capacity);
        all.extend(leases);
        FreeList { leases: Mutex::new(all), returned: Condvar::new(), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Lease>> {
        self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A free lease, waiting for one to be returned; `None` once `stop` is set (checked every
    /// `poll`).
    pub(crate) fn take(&self, stop: &AtomicBool, poll: Duration) -> Option<Lease> {
        let mut leases = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(lease) = leases.pop() {
                return Some(lease);
            }
            leases =
                self.returned.wait_timeout(leases, poll).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }

    /// A free lease if there is one now.
    pub(crate) fn try_take(&self) -> Option<Lease> {
        self.lock().pop()
    }

    /// Returns a lease.
    pub(crate) fn give(&self, lease: Lease) {
        let mut leases = self.lock();
        assert!(leases.len() < self.capacity, "more leases returned than the pool has");
        leases.push(lease);
        drop(leases);
        self.returned.notify_one();
    }

    /// Leases free right now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_disjoint_and_zeroed() {
        let (pool, mut leases) = BufferPool::new(3, 2 * BUFFER_ALIGNMENT);
        let iovecs = pool.iovecs();
        for (lease, iovec) in leases.iter_mut().zip(&iovecs) {
            let fill = lease.index() as u8 + 1;
            let bytes = pool.bytes_mut(lease);
            assert_eq!(bytes.as_ptr() as usize % BUFFER_ALIGNMENT, 0);
            assert_eq!(bytes.as_ptr() as usize, iovec.iov_base as usize);
            assert!(bytes.iter().all(|byte| *byte == 0));
            bytes.fill(fill);
        }
        for lease in &mut leases {
            let expected = lease.index() as u8 + 1;
            assert!(pool.bytes_mut(lease).iter().all(|byte| *byte == expected));
        }
    }

    #[test]
    #[should_panic(expected = "a lease of another pool")]
    fn a_lease_of_another_pool_is_refused() {
        let (first, _first_leases) = BufferPool::new(1, BUFFER_ALIGNMENT);
        let (_second, second_leases) = BufferPool::new(1, BUFFER_ALIGNMENT);
        let mut lease = second_leases.into_iter().next().expect("one lease");
        let _ = first.bytes_mut(&mut lease);
    }

    #[test]
    fn the_free_list_hands_out_each_lease_once_and_stops_waiting_when_told() {
        let (_pool, leases) = BufferPool::new(2, BUFFER_ALIGNMENT);
        let free = FreeList::new(leases);
        let stop = AtomicBool::new(false);
        let first = free.take(&stop, Duration::from_millis(1)).expect("a lease");
        let second = free.try_take().expect("a second lease");
        assert_ne!(first.index(), second.index());
        assert!(free.try_take().is_none());
        stop.store(true, Ordering::Relaxed);
        assert!(free.take(&stop, Duration::from_millis(1)).is_none(), "stopped");
        free.give(first);
        free.give(second);
        assert_eq!(free.len(), 2);
    }
}
