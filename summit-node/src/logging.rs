//! Logging set-up: [`init`] installs one `tracing` subscriber for the process (an `EnvFilter`
//! that `RUST_LOG` overrides, human or JSON lines on stderr, which journald collects) and the
//! capture layer that keeps the last [`LOG_BUFFER_LINES`] events in a [`LogBuffer`] for the
//! console's `log [n]`.
//!
//! The capture layer ([`LogBuffer::layer`]) works without the global set-up too, so tests install
//! it with `tracing::subscriber::with_default`. A captured line is the message followed by the
//! event's structured fields as `key=value` (values with spaces quoted). The buffer can also
//! forward events at or above a level to the observatory as `logMessage`
//! ([`LogBuffer::forward_to_events`]).
//!
//! Time stamps of captured lines are the wall clock's: they are for people reading the console,
//! not for ordering anything.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::csc::{log_levels, CscEvent};
use crate::events::EventPublisher;
use crate::status::LogLine;

/// Captured lines kept at most (the oldest goes first).
pub const LOG_BUFFER_LINES: usize = 1000;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (journald adds the time and the unit).
    Human,
    /// One JSON object per line (message and fields flattened), for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is neither \"human\" nor \"json\"")),
        }
    }
}

/// Where `logMessage` events go, and from which level.
struct Forward {
    min_level: Level,
    publisher: Arc<EventPublisher>,
}

struct BufferInner {
    lines: Mutex<VecDeque<LogLine>>,
    captured_total: AtomicU64,
    forward: Mutex<Option<Forward>>,
}

/// The most recent log lines (at most [`LOG_BUFFER_LINES`]), shared by the capture layer and
/// whoever shows them. Cloning shares the same buffer.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<BufferInner>,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogBuffer")
            .field("lines", &self.len())
            .field("captured_total", &self.captured_total())
            .finish()
    }
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogBuffer {
    /// An empty buffer (its memory, [`LOG_BUFFER_LINES`] slots, is reserved now).
    pub fn new() -> LogBuffer {
        LogBuffer {
            inner: Arc::new(BufferInner {
                lines: Mutex::new(VecDeque::with_capacity(LOG_BUFFER_LINES)),
                captured_total: AtomicU64::new(0),
                forward: Mutex::new(None),
            }),
        }
    }

    /// The layer that fills this buffer; add it to any subscriber.
    pub fn layer(&self) -> CaptureLayer {
        CaptureLayer { buffer: self.clone() }
    }

    /// The most recent `limit` lines, oldest first.
    pub fn tail(&self, limit: usize) -> Vec<LogLine> {
        let lines = lock(&self.inner.lines);
        let skip = lines.len().saturating_sub(limit);
        lines.iter().skip(skip).cloned().collect()
    }

    /// Lines held now.
    pub fn len(&self) -> usize {
        lock(&self.inner.lines).len()
    }

    /// `true` when no line is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines captured since start (including those no longer held).
    pub fn captured_total(&self) -> u64 {
        self.inner.captured_total.load(Ordering::Relaxed)
    }

    /// From now on, events at `min_level` or more severe are also published as `logMessage`
    /// (replacing an earlier forward). The publisher never logs on the caller's thread, so this
    /// cannot recurse.
    pub fn forward_to_events(&self, publisher: Arc<EventPublisher>, min_level: Level) {
        *lock(&self.inner.forward) = Some(Forward { min_level, publisher });
    }

    fn push(&self, line: LogLine) {
        let mut lines = lock(&self.inner.lines);
        if lines.len() == LOG_BUFFER_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
        self.inner.captured_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// A `tracing_subscriber` layer that captures every event it sees into a [`LogBuffer`].
pub struct CaptureLayer {
    buffer: LogBuffer,
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let message = visitor.into_message();
        let time_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_secs_f64()).unwrap_or(0.0);
        if let Some(forward) = lock(&self.buffer.inner.forward).as_ref() {
            // Levels compare by verbosity: ERROR < WARN < ... < TRACE.
            if *metadata.level() <= forward.min_level {
                forward.publisher.publish(CscEvent::LogMessage {
                    name: metadata.target().to_owned(),
                    level: log_levels::from_tracing(metadata.level()),
                    message: message.clone(),
                    traceback: String::new(),
                    file_path: metadata.file().unwrap_or_default().to_owned(),
                    function_name: metadata.module_path().unwrap_or_default().to_owned(),
                    line_number: metadata.line().map_or(0, |line| i32::try_from(line).unwrap_or(i32::MAX)),
                    process: i32::try_from(std::process::id()).unwrap_or(0),
                });
            }
        }
        self.buffer.push(LogLine {
            time_unix,
            level: metadata.level().to_string(),
            target: metadata.target().to_owned(),
            message,
        });
    }
}

/// Collects the message and the `key=value` fields of one event.
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl LineVisitor {
    fn field_separator(&mut self, field: &Field) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        self.fields.push_str(field.name());
        self.fields.push('=');
    }

    fn into_message(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            return;
        }
        self.field_separator(field);
        if value.is_empty() || value.contains(char::is_whitespace) || value.contains('"') {
            let _ = write!(self.fields, "{value:?}");
        } else {
            self.fields.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        let text = format!("{value:?}");
        self.field_separator(field);
        // `%value` fields arrive here as their Display text; `?text` is already quoted.
        if text.contains(char::is_whitespace) && !text.starts_with('"') {
            let _ = write!(self.fields, "{text:?}");
        } else {
            self.fields.push_str(&text);
        }
    }
}

/// The filter: `RUST_LOG` when it is set (and not empty), else `default` (`info`,
/// `summit_node=debug,info`, ...). An invalid filter is an error naming where it came from.
pub fn filter_from(rust_log: Option<&str>, default: &str) -> Result<EnvFilter, String> {
    match rust_log.filter(|value| !value.trim().is_empty()) {
        Some(value) => {
            EnvFilter::try_new(value).map_err(|error| format!("RUST_LOG={value:?} is invalid: {error}"))
        }
        None => {
            EnvFilter::try_new(default).map_err(|error| format!("log filter {default:?} is invalid: {error}"))
        }
    }
}

/// The whole subscriber: filter, capture into `buffer`, and the formatted output to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    buffer: &LogBuffer,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    // The capture keeps info and above whatever the output shows (a terminal at `warn` still
    // leaves the console's `log` its context); the output follows `filter`.
    let registry = tracing_subscriber::registry().with(buffer.layer().with_filter(LevelFilter::INFO));
    match format {
        LogFormat::Human => {
            Box::new(registry.with(
                tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).with_filter(filter),
            ))
        }
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer)
                    .with_filter(filter),
            ),
        ),
    }
}

/// Installs the process's subscriber (once): `filter` unless `RUST_LOG` is set, `format` on
/// stderr (colours only on a terminal), and the capture layer. Returns the buffer of captured
/// lines. Fails if the filter is invalid or a subscriber is already installed.
pub fn init(format: LogFormat, filter: &str) -> Result<LogBuffer, String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_from(rust_log.as_deref(), filter)?;
    let buffer = LogBuffer::new();
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter, &buffer, std::io::stderr, ansi)
        .try_init()
        .map_err(|error| format!("cannot install the log subscriber: {error}"))?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory writer for the formatted output.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'writer> MakeWriter<'writer> for Captured {
        type Writer = Captured;
        fn make_writer(&'writer self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn captured_line_holds_message_then_structured_fields() {
        let buffer = LogBuffer::new();
        let subscriber = tracing_subscriber::registry().with(buffer.layer());
        tracing::subscriber::with_default(subscriber, || {
            let path = "/var/lib/summit-node";
            let note = "two words";
            tracing::warn!(stream = "LSSTCam", frames_total = 42u64, path = %path, note, "ring filling");
        });
        let lines = buffer.tail(10);
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line.level, "WARN");
        assert_eq!(line.target, module_path!());
        assert_eq!(
            line.message,
            "ring filling stream=LSSTCam frames_total=42 path=/var/lib/summit-node note=\"two words\""
        );
        assert!(line.time_unix > 1.6e9, "a wall-clock time: {}", line.time_unix);
    }

    #[test]
    fn buffer_keeps_the_last_thousand_lines_and_tail_returns_the_newest_oldest_first() {
        let buffer = LogBuffer::new();
        let subscriber = tracing_subscriber::registry().with(buffer.layer());
        tracing::subscriber::with_default(subscriber, || {
            for index in 0..(LOG_BUFFER_LINES + 250) {
                tracing::info!(index, "line");
            }
        });
        assert_eq!(buffer.len(), LOG_BUFFER_LINES);
        assert_eq!(buffer.captured_total(), (LOG_BUFFER_LINES + 250) as u64);
        let tail = buffer.tail(3);
        let messages: Vec<&str> = tail.iter().map(|line| line.message.as_str()).collect();
        assert_eq!(messages, ["line index=1247", "line index=1248", "line index=1249"]);
        assert_eq!(buffer.tail(usize::MAX)[0].message, "line index=250");
    }

    #[test]
    fn the_output_follows_its_filter_while_the_capture_keeps_info_and_above() {
        let buffer = LogBuffer::new();
        let output = Captured::default();
        let filter = filter_from(None, "warn").expect("valid filter");
        let subscriber = subscriber(LogFormat::Human, filter, &buffer, output.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("never kept");
            tracing::info!("not shown");
            tracing::error!(code = 100, "shown");
        });
        let text = String::from_utf8(lock(&output.0).clone()).expect("UTF-8");
        assert!(text.contains("shown code=100"), "{text}");
        assert!(!text.contains("not shown"), "{text}");
        let captured: Vec<String> = buffer.tail(10).into_iter().map(|line| line.message).collect();
        assert_eq!(captured.len(), 2, "{captured:?}");
        assert!(captured[0].starts_with("not shown") && captured[1].starts_with("shown"), "{captured:?}");
    }

    #[test]
    fn json_format_writes_one_parseable_object_per_line() {
        let buffer = LogBuffer::new();
        let output = Captured::default();
        let filter = filter_from(None, "info").expect("valid filter");
        let subscriber = subscriber(LogFormat::Json, filter, &buffer, output.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(stream = "LATISS", bytes_total = 7u64, "drained");
            tracing::warn!("link down");
        });
        let text = String::from_utf8(lock(&output.0).clone()).expect("UTF-8");
        let objects: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["message"], "drained");
        assert_eq!(objects[0]["stream"], "LATISS");
        assert_eq!(objects[0]["bytes_total"], 7);
        assert_eq!(objects[0]["level"], "INFO");
        assert_eq!(objects[1]["level"], "WARN");
    }

    #[test]
    fn rust_log_overrides_the_configured_filter_and_bad_filters_are_named() {
        let filter = filter_from(Some("debug"), "warn").expect("valid");
        assert_eq!(filter.max_level_hint(), Some(tracing::level_filters::LevelFilter::DEBUG));
        let filter = filter_from(Some("  "), "warn").expect("valid");
        assert_eq!(filter.max_level_hint(), Some(tracing::level_filters::LevelFilter::WARN));
        let error = filter_from(Some("summit_node=loud"), "info").expect_err("invalid");
        assert!(error.starts_with("RUST_LOG=\"summit_node=loud\" is invalid"), "{error}");
        let error = filter_from(None, "=[").expect_err("invalid");
        assert!(error.starts_with("log filter \"=[\" is invalid"), "{error}");
    }

    #[test]
    fn warnings_are_forwarded_as_log_message_events_and_infos_are_not() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let publisher = Arc::new(
            EventPublisher::start(
                &directory.path().join("events.sock"),
                &directory.path().join("events.jsonl"),
            )
            .expect("publisher"),
        );
        let buffer = LogBuffer::new();
        buffer.forward_to_events(Arc::clone(&publisher), Level::WARN);
        let subscriber = tracing_subscriber::registry().with(buffer.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("routine");
            tracing::warn!(stream = "LSSTCam", "ring 90% full");
        });
        publisher.shutdown();
        let text = std::fs::read_to_string(directory.path().join("events.jsonl")).expect("events file");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("JSON")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["topic"], "lsst.sal.SummitNode.logevent_logMessage");
        assert_eq!(lines[0]["level"], log_levels::WARNING);
        assert_eq!(lines[0]["message"], "ring 90% full stream=LSSTCam");
        assert_eq!(lines[0]["name"], module_path!());
        assert_eq!(lines[0]["process"], std::process::id());
        assert!(lines[0]["lineNumber"].as_i64().expect("a line number") > 0);
        assert_eq!(buffer.len(), 2, "both are captured for the console");
    }

    #[test]
    fn log_format_parses_human_and_json_only() {
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("JSON".parse::<LogFormat>().is_err());
    }
}
