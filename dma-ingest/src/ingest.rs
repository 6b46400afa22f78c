//! Starting and stopping one stream's ingest: choosing the I/O path, opening the endpoints, and
//! the handle the daemon and the tests hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use ringbuffer::{Clock, Ring};

use crate::config::{BackendChoice, Endpoint, IngestOptions};
use crate::core::{IngestEvent, IngestObserver, StreamCore};
use crate::protocol::geometry::Focalplane;

/// The I/O path a running ingest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, registered buffers, `O_DIRECT` writes from the receive buffers.
    IoUring,
    /// Threads, blocking reads, the ring's own `pwritev`.
    Portable,
}

/// Why an ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The options are invalid.
    #[error("invalid ingest options: {0}")]
    Options(String),
    /// io_uring was required but is not usable here.
    #[error("io_uring was required (backend = io_uring) but is not usable: {0}")]
    IoUringUnavailable(String),
    /// An endpoint could not be opened.
    #[error("{0}")]
    Endpoint(std::io::Error),
}

/// Decides the I/O path: `(backend, reason)` for the log.
pub fn choose_backend(choice: BackendChoice, ring: &Ring) -> Result<(Backend, String), StartError> {
    let direct = ring.direct_data_fd().is_some();
    match choice {
        BackendChoice::Portable => Ok((Backend::Portable, "portable path chosen by configuration".into())),
        BackendChoice::IoUring => {
            crate::uring::probe().map_err(StartError::IoUringUnavailable)?;
            if !direct {
                return Err(StartError::IoUringUnavailable(
                    "the ring's data file is not open with O_DIRECT (filesystem without O_DIRECT?)".into(),
                ));
            }
            Ok((Backend::IoUring, "io_uring chosen by configuration".into()))
        }
        BackendChoice::Auto => match crate::uring::probe() {
            Ok(()) if direct => Ok((Backend::IoUring, "io_uring available".into())),
            Ok(()) => Ok((
                Backend::Portable,
                "io_uring available but the ring's data file is not O_DIRECT; using the portable path".into(),
            )),
            Err(reason) => {
                Ok((Backend::Portable, format!("io_uring unavailable ({reason}); using the portable path")))
            }
        },
    }
}

/// A running ingest of one stream.
pub struct IngestHandle {
    thread: Option<JoinHandle<Result<Ring, String>>>,
    metadata_thread: Option<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    observer: Arc<IngestObserver>,
    events: Receiver<IngestEvent>,
    backend: Backend,
}

impl IngestHandle {
    /// Starts ingesting `frames` (and header-service messages from `metadata`) into `ring` on
    /// its own thread(s). The endpoints are listening (or open) when this returns. Frames must
    /// belong to `focalplane` (this node's detectors).
    pub fn start(
        ring: Ring,
        focalplane: Focalplane,
        frames: &Endpoint,
        metadata: Option<&Endpoint>,
        options: IngestOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<IngestHandle, StartError> {
        options.validate().map_err(StartError::Options)?;
        let (backend, reason) = choose_backend(options.backend, &ring)?;
        tracing::info!(stream = %options.stream, ?backend, %reason, frames = %frames, "ingest starting");
        let stream = options.stream.clone();
        let (core, events) = StreamCore::new(ring, focalplane, options, Arc::clone(&clock));
        let observer = Arc::clone(&core.observer);
        *observer.backend.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            format!("{backend:?}: {reason}");
        let shutdown = Arc::new(AtomicBool::new(false));
        let (metadata_items, metadata_thread) = match metadata {
            Some(endpoint) => {
                let (items, thread) = crate::metadata_channel::spawn(
                    endpoint.clone(),
                    stream.clone(),
                    Arc::clone(&observer),
                    Arc::clone(&shutdown),
                    core.options.buffer_count,
                    clock,
                )
                .map_err(StartError::Endpoint)?;
                (Some(items), Some(thread))
            }
            None => (None, None),
        };
        let thread_shutdown = Arc::clone(&shutdown);
        let builder = std::thread::Builder::new().name(format!("ingest-{stream}"));
        let listener = crate::source::Listener::open(frames).map_err(StartError::Endpoint)?;
        let thread = match backend {
            Backend::IoUring => {
                builder.spawn(move || crate::uring::run(core, listener, metadata_items, thread_shutdown))
            }
            Backend::Portable => {
                builder.spawn(move || crate::portable::run(core, listener, metadata_items, thread_shutdown))
            }
        }
        .map_err(StartError::Endpoint)?;
        Ok(IngestHandle { thread: Some(thread), metadata_thread, shutdown, observer, events, backend })
    }

    /// The I/O path in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Counters and the latest ring statistics.
    pub fn observer(&self) -> &Arc<IngestObserver> {
        &self.observer
    }

    /// Completeness, rejection and metadata events, in order.
    pub fn events(&self) -> &Receiver<IngestEvent> {
        &self.events
    }

    /// True once the ingest thread ended (a replay file was read to its end, or it failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops accepting frames, makes everything received durable, and returns the ring; or the
    /// error that stopped the ingest.
    pub fn shutdown(mut self) -> Result<Ring, String> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the ingest to end by itself (a replay file) and returns the ring.
    pub fn wait(mut self) -> Result<Ring, String> {
        self.join()
    }

    fn join(&mut self) -> Result<Ring, String> {
        let thread = self.thread.take().expect("joined once");
        let result = thread.join().unwrap_or_else(|_| Err("the ingest thread panicked".into()));
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(metadata) = self.metadata_thread.take() {
            let _ = metadata.join();
        }
        result
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(metadata) = self.metadata_thread.take() {
            let _ = metadata.join();
        }
    }
}
