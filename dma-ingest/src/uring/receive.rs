//! The io_uring path's receive side: one thread per connection reads frames into leased pool
//! buffers with blocking `read(2)`s, checks them, and hands them to the writer.
//!
//! Why plain reads and not io_uring ones: on a stream socket a `READ_FIXED` completes with
//! whatever the socket holds (64–200 KiB of a 4.7 MB frame), so every frame took 20–80
//! completions, each a round trip through the loop, and the loop that also drove the disk could
//! not keep both busy. A blocking read of the whole frame stays in the kernel until it is done.
//! Measured with the writes replaced by no-ops (receive alone): the io_uring loop reached 2.9–4.4
//! GB/s at 0.14–0.22 CPU s/GB, blocking reads 4.6–5.6 GB/s at 0.10 (docs/dma-ingest.md).
//!
//! A frame lands at byte 4096 of its buffer (the block in front is left for the ring's record
//! header), is checked in one CRC pass ([`check_payload`], which also yields the ring record's
//! CRC) and goes to the writer with its lease. Nothing is copied in user space: the bytes the
//! kernel copied from the socket are the bytes the writer's `WRITE_FIXED` sends to the disk.
//! A receiver reads only while it holds a lease, so when the writer or the ring is slow the
//! socket is not read and the sender blocks (back-pressure).

#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use super::pool::{BufferPool, FreeList, Lease};
use super::Waker;
use crate::core::{check_payload, parse_header, IngestCounters, IngestObserver, RejectKind};
use crate::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use crate::source::{read_full, Filled, SHUTDOWN_POLL};

const BLOCK: usize = FRAME_HEADER_BLOCK_BYTES;

/// What a receiver hands the writer, in the order it happened on its connection.
pub(super) enum Received {
    /// A complete frame whose header and pixel CRC checked out, in its leased buffer at byte
    /// 4096; `record_crc` is the CRC32 of the whole frame (the ring record's payload CRC).
    Frame { connection: u64, lease: Lease, header: FrameHeader, record_crc: u32 },
    /// Input refused; the writer counts, logs and announces it.
    Rejected { connection: u64, kind: RejectKind, header: Option<FrameHeader>, detail: String },
    /// The connection ended (`bad`: closed because its framing could not be trusted).
    Closed { connection: u64, bad: bool },
}

/// One connection's receiver.
pub(super) struct Receiver {
    pub(super) connection: u64,
    pub(super) name: String,
    pub(super) input: Box<dyn Read + Send>,
    pub(super) pool: Arc<BufferPool>,
    pub(super) free: Arc<FreeList>,
    pub(super) writer: SyncSender<Received>,
    pub(super) waker: Arc<Waker>,
    /// Set by the writer at shutdown: stop at the next frame boundary or read timeout.
    pub(super) stop: Arc<AtomicBool>,
    pub(super) observer: Arc<IngestObserver>,
    pub(super) max_frame_bytes: usize,
}

impl Receiver {
    /// Receives frames until the connection ends or `stop` is set, then reports the close.
    pub(super) fn run(mut self) {
        let bad = self.receive_frames();
        tracing::info!(connection = %self.name, bad, "frame connection closed");
        // The writer may have ended: then nobody wants to know.
        let _ = self.send(Received::Closed { connection: self.connection, bad });
    }

    /// Reads frames until the stream ends; returns whether it was closed as untrustworthy. A
    /// partly read frame is dropped with its lease returned: it was never acknowledged.
    fn receive_frames(&mut self) -> bool {
        loop {
            let Some(mut lease) = self.free.take(&self.stop, SHUTDOWN_POLL) else { return false };
            let outcome = self.receive_one(&mut lease);
            match outcome {
                Outcome::Frame { header, record_crc } => {
                    let connection = self.connection;
                    if let Err(Received::Frame { lease, .. }) =
                        self.send(Received::Frame { connection, lease, header, record_crc })
                    {
                        // The writer has ended: nothing will be written any more. The lease goes
                        // home (the pool must not shrink) and this receiver ends.
                        self.free.give(lease);
                        return false;
                    }
                }
                Outcome::Refused => self.free.give(lease),
                Outcome::End { bad } => {
                    self.free.give(lease);
                    return bad;
                }
            }
        }
    }

    /// Reads and checks one frame into `lease`'s buffer.
    fn receive_one(&mut self, lease: &mut Lease) -> Outcome {
        let stop = Arc::clone(&self.stop);
        let stopping = move || stop.load(std::sync::atomic::Ordering::Relaxed);
        let buffer = self.pool.bytes_mut(lease);
        match read_full(&mut self.input, &mut buffer[BLOCK..2 * BLOCK], &stopping) {
            Ok(Filled::Full) => {}
            Ok(Filled::CleanEnd | Filled::Shutdown) => return Outcome::End { bad: false },
            Ok(Filled::Truncated { found }) => {
                let detail = format!("stream ended {found} bytes into a frame header");
                self.rejected(RejectKind::Truncated, None, detail);
                return Outcome::End { bad: true };
            }
            Err(error) => {
                tracing::warn!(connection = %self.name, %error, "read failed");
                return Outcome::End { bad: true };
            }
        }
        let header = match parse_header(&buffer[BLOCK..2 * BLOCK], self.max_frame_bytes) {
            Ok(header) => header,
            Err((kind, detail)) => {
                let detail = format!("{detail}; closing the connection (its framing is lost)");
                self.rejected(kind, None, detail);
                return Outcome::End { bad: true };
            }
        };
        let frame_bytes = header.frame_length_bytes();
        assert!(BLOCK + frame_bytes <= buffer.len(), "parse_header bounds the frame by the buffers");
        match read_full(&mut self.input, &mut buffer[2 * BLOCK..BLOCK + frame_bytes], &stopping) {
            Ok(Filled::Full) => {}
            Ok(Filled::Shutdown) => return Outcome::End { bad: false },
            Ok(Filled::CleanEnd | Filled::Truncated { .. }) => {
                let detail = "stream ended inside a frame's pixels".to_owned();
                self.rejected(RejectKind::Truncated, Some(header), detail);
                return Outcome::End { bad: true };
            }
            Err(error) => {
                tracing::warn!(connection = %self.name, %error, "read failed");
                return Outcome::End { bad: true };
            }
        }
        IngestCounters::add(&self.observer.counters.frames_received_total, 1);
        match check_payload(&header, &buffer[BLOCK..BLOCK + frame_bytes]) {
            Ok(record_crc) => Outcome::Frame { header, record_crc },
            Err(error) => {
                // The header's length was good: the stream is still in step.
                self.rejected(RejectKind::of_frame_error(&error), Some(header), error.to_string());
                Outcome::Refused
            }
        }
    }

    fn rejected(&self, kind: RejectKind, header: Option<FrameHeader>, detail: String) {
        // A writer that has ended counts nothing more; the reading stops at the next frame.
        let _ = self.send(Received::Rejected { connection: self.connection, kind, header, detail });
    }

    /// Hands an item to the writer and wakes it. The channel is bounded: a receiver waits here
    /// while the writer is behind. Fails only when the writer has ended, giving the item back
    /// (a frame's lease must return to the free list).
    fn send(&self, item: Received) -> Result<(), Received> {
        match self.writer.send(item) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(std::sync::mpsc::SendError(item)) => Err(item),
        }
    }
}

/// How reading one frame ended.
enum Outcome {
    /// Checked: hand it to the writer.
    Frame { header: FrameHeader, record_crc: u32 },
    /// Refused (bad pixel CRC); the stream continues.
    Refused,
    /// The connection is done.
    End { bad: bool },
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::core::tests::frame;

    /// A writer that has ended (its channel closed: it failed, or panicked) must not cost the
    /// pool its buffers: the receiver gives the lease of the frame it could not hand over back to
    /// the free list and ends, instead of dropping it and then waiting forever for a free buffer
    /// with the connection open and unread.
    #[test]
    fn a_receiver_whose_writer_has_ended_gives_its_lease_back_and_ends() {
        let one = frame(4, 7);
        let (pool, leases) = BufferPool::new(1, BLOCK + one.len());
        let free = Arc::new(FreeList::new(leases));
        let (writer, writer_side) = std::sync::mpsc::sync_channel(4);
        drop(writer_side);
        let observer = Arc::new(IngestObserver {
            counters: IngestCounters::default(),
            ring_stats: Mutex::new(None),
            backend: Mutex::new(String::new()),
        });
        let receiver = Receiver {
            connection: 1,
            name: "test".to_owned(),
            input: Box::new(std::io::Cursor::new([one.clone(), one.clone(), one.clone()].concat())),
            pool: Arc::new(pool),
            free: Arc::clone(&free),
            writer,
            waker: Arc::new(super::super::Waker::new().expect("eventfd")),
            stop: Arc::new(AtomicBool::new(false)),
            observer: Arc::clone(&observer),
            max_frame_bytes: one.len(),
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            receiver.run();
            let _ = done.send(());
        });
        finished.recv_timeout(Duration::from_secs(10)).expect("the receiver ended");
        assert_eq!(free.len(), 1, "the lease went back to the free list");
        assert_eq!(observer.counters.frames_received_total.load(Ordering::Relaxed), 1, "it stopped at once");
    }
}
