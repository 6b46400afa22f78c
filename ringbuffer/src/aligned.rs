//! `AlignedBuf`: heap memory aligned to 4096 bytes, without `unsafe`.
//!
//! `O_DIRECT` needs buffers aligned to the logical block size. The buffer is a `Vec` of
//! 4096-byte, 4096-aligned blocks viewed as bytes through `zerocopy`, so this crate can keep
//! `#![forbid(unsafe_code)]`. The ingest will hand the ring io_uring registered buffers instead;
//! the ring accepts any 4096-aligned slice.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::layout::BLOCK_BYTES_USIZE;

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK_BYTES_USIZE]);

const _: () = assert!(core::mem::size_of::<Block>() == BLOCK_BYTES_USIZE);
const _: () = assert!(core::mem::align_of::<Block>() == BLOCK_BYTES_USIZE);

/// A zero-initialised, 4096-aligned byte buffer whose length is a multiple of 4096.
pub struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    /// A zeroed buffer of at least `len_bytes`, rounded up to a multiple of 4096.
    pub fn zeroed(len_bytes: usize) -> Self {
        let block_count = len_bytes.div_ceil(BLOCK_BYTES_USIZE);
        Self { blocks: vec![Block([0; BLOCK_BYTES_USIZE]); block_count] }
    }

    /// Length in bytes (a multiple of 4096).
    pub fn len(&self) -> usize {
        self.blocks.len() * BLOCK_BYTES_USIZE
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.blocks.as_bytes()
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.blocks.as_mut_bytes()
    }
}

impl core::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len()).finish()
    }
}

/// Whether `bytes` starts on a 4096-byte boundary.
pub fn is_block_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(BLOCK_BYTES_USIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_rounded_up() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len() % BLOCK_BYTES_USIZE, 0);
            assert!(buf.len() >= len);
            if !buf.is_empty() {
                assert!(is_block_aligned(buf.as_slice()));
            }
        }
    }
}
