//! `dma-ingest`: receives camera DAQ frames and writes them into the persistent rings.
//!
//! **Not built yet (issue 4).** This crate will hold the DAQ frame receiver (Unix socket, TCP,
//! replay file or a DMA character device), io_uring zero-copy ingest into registered buffers
//! written to the ring with O_DIRECT, completeness tracking per exposure and detector, and a
//! portable fallback path with the same semantics when io_uring is unavailable.
//! It is the only crate of the workspace allowed to contain `unsafe` (io_uring needs it).
//!
//! Built so far: [`protocol`], the input contract shared with `hw-sim`, `failover` and
//! `summit-node` (frame protocol and camera geometry). The ingest itself is not built yet:
//! nothing here pretends to ingest anything.

pub mod protocol;
