//! The node's configuration: a TOML file (`run --config FILE`, `check-config FILE`), every field
//! documented in `summit-node/summit-node.example.toml`, parsed strictly (unknown keys are
//! rejected, with their line) and then validated field by field: an error names the field, the
//! value and what is expected. `summit-node sim` builds the same structure from embedded
//! defaults ([`Config::simulation`]).
//!
//! Only this crate reads configuration files; the other crates take typed options.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use dma_ingest::protocol::geometry::Focalplane;
use dma_ingest::{BackendChoice, Endpoint};
use serde::{Deserialize, Deserializer};

/// A configuration error: where (file and field), the value, and what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// The field (`stream[1].ring_capacity`), when known.
    pub field: String,
    /// What is wrong, with the value and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(formatter, "{}: ", file.display())?;
        }
        if self.field.is_empty() {
            write!(formatter, "{}", self.message)
        } else {
            write!(formatter, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { file: None, field: field.into(), message: message.into() }
}

/// A size in bytes, written as an integer or a string with a binary unit (`"64GiB"`, `"512M"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    /// The ring tool's size syntax (`ringbuffer::parse_size_bytes`): binary units.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ringbuffer::parse_size_bytes(text).map(ByteSize).map_err(|_| {
            format!("{text:?} is not a size (expected bytes, or a number with a binary unit: \"64GiB\", \"512MiB\")")
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Integer(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Integer(value) => Ok(ByteSize(value)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The state the node enters at start (the observatory commands it from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    /// Wait for `start` (the observatory's default for a CSC).
    #[default]
    Standby,
    /// Configured, rings open, draining; waiting for `enable` to acquire.
    Disabled,
    /// Acquiring at once (stand-alone operation, simulation).
    Enabled,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatChoice {
    /// One human-readable line per event on stderr (journald adds the time).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name in logs, events and the console.
    pub name: String,
    /// Where the rings, the drain manifest and the event file live.
    pub data_dir: PathBuf,
    /// State at start.
    #[serde(default)]
    pub initial_state: InitialState,
    /// Bounded shutdown: the longest SIGTERM may take before the process exits anyway, seconds.
    #[serde(default = "default_shutdown_timeout_s")]
    pub shutdown_timeout_s: u64,
}

fn default_shutdown_timeout_s() -> u64 {
    30
}

/// `[[stream]]`: one camera stream and its ring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// `LSSTCam` or `LATISS`.
    pub instrument: String,
    /// LSSTCam only: the rafts this node owns (`["R22", "R00"]`); empty or absent = all 25.
    #[serde(default)]
    pub rafts: Vec<String>,
    /// Where frames arrive (`unix:PATH`, `tcp:HOST:PORT`, `file:PATH`, `device:PATH`).
    pub frames: String,
    /// Where header-service messages arrive (same forms).
    pub metadata: String,
    /// Size of the ring's data file.
    pub ring_capacity: ByteSize,
    /// When the ring is full: `block` (back-pressure to the camera) or `reject`.
    #[serde(default = "default_full_policy")]
    pub full_policy: String,
    /// I/O path: `auto`, `io_uring` or `portable`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Write the ring's data file once at creation (slow for large rings, steady speed after).
    #[serde(default)]
    pub zero_fill: bool,
}

fn default_full_policy() -> String {
    "block".into()
}

fn default_backend() -> String {
    "auto".into()
}

/// `[base]`: the base object store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    /// `file:///path` (a local directory) or `s3://bucket`.
    pub url: String,
    /// S3 only: the endpoint (`http://10.0.0.5:9000`); absent = AWS.
    pub endpoint: Option<String>,
    /// S3 only: region.
    #[serde(default = "default_region")]
    pub region: String,
    /// S3 only: allow plain HTTP to the endpoint.
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// `[link]`: the link monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// What to probe: `tcp:HOST:PORT` (connect) or `http://HOST:PORT/PATH` (GET, any status).
    pub probe: String,
    /// Between probes, milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// A probe slower than this failed, milliseconds.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// Consecutive failures that take the link DOWN.
    #[serde(default = "default_failures_to_down")]
    pub failures_to_down: u32,
    /// Consecutive successes that bring it back.
    #[serde(default = "default_successes_to_up")]
    pub successes_to_up: u32,
    /// Round trip above which the link is DEGRADED, milliseconds.
    #[serde(default = "default_degraded_rtt_ms")]
    pub degraded_rtt_ms: u64,
}

fn default_probe_interval_ms() -> u64 {
    500
}
fn default_probe_timeout_ms() -> u64 {
    750
}
fn default_failures_to_down() -> u32 {
    3
}
fn default_successes_to_up() -> u32 {
    3
}
fn default_degraded_rtt_ms() -> u64 {
    200
}

/// `[drain]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSection {
    /// Upload rate limit shared by the streams, MB/s (10^6 bytes); 0 = unlimited.
    #[serde(default)]
    pub rate_limit_mb_per_s: f64,
    /// An exposure with nothing new for this long is drained incomplete, seconds.
    #[serde(default = "default_incomplete_timeout_s")]
    pub incomplete_timeout_s: u64,
    /// Send the newest complete exposure first while a backlog drains (live lane).
    #[serde(default = "default_true")]
    pub live_lane: bool,
    /// Start with the drain paused.
    #[serde(default)]
    pub paused: bool,
}

fn default_incomplete_timeout_s() -> u64 {
    120
}
fn default_true() -> bool {
    true
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            rate_limit_mb_per_s: 0.0,
            incomplete_timeout_s: default_incomplete_timeout_s(),
            live_lane: true,
            paused: false,
        }
    }
}

/// `[[console.serial]]`: one serial console port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSection {
    /// The device (`/dev/ttyS0`, `/dev/ttyUSB0`).
    pub device: PathBuf,
    /// Baud rate (8N1, no flow control).
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// Whether commands that change state are allowed on this port.
    #[serde(default)]
    pub operator: bool,
}

fn default_baud_rate() -> u32 {
    115_200
}

/// `[console]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// The Unix socket for ssh users (mode 0660).
    pub socket: PathBuf,
    /// Group owning the socket (who may connect); absent = the daemon's group.
    pub socket_group: Option<String>,
    /// Members of this group get operator mode on the socket (root always does).
    pub operator_group: Option<String>,
    /// Serial ports.
    #[serde(default)]
    pub serial: Vec<SerialSection>,
}

/// `[events]`: observatory-control events as JSON lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Subscribers connect here (Unix socket, mode 0660).
    pub socket: PathBuf,
    /// Every event is appended here.
    pub file: PathBuf,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormatChoice,
    /// A tracing filter (`info`, `summit_node=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection { format: LogFormatChoice::Human, level: default_level() }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`.
    pub node: NodeSection,
    /// `[[stream]]`, one or two (LSSTCam and/or LATISS).
    pub stream: Vec<StreamSection>,
    /// `[base]`.
    pub base: BaseSection,
    /// `[link]`.
    pub link: LinkSection,
    /// `[drain]`.
    #[serde(default)]
    pub drain: DrainSection,
    /// `[console]`.
    pub console: ConsoleSection,
    /// `[events]`.
    pub events: EventsSection,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingSection,
}

/// Where the base store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseLocation {
    /// A local directory (`file:///path`).
    Directory(PathBuf),
    /// An S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
    },
}

/// What the link monitor probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// A TCP connect.
    Tcp(SocketAddr),
    /// An HTTP GET.
    Http {
        /// Address to connect to.
        address: SocketAddr,
        /// Host header.
        host: String,
        /// Path.
        path: String,
    },
}

/// One stream, validated.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// `LSSTCam` or `LATISS`.
    pub instrument: String,
    /// The detectors this node owns.
    pub focalplane: Focalplane,
    /// Frames endpoint.
    pub frames: Endpoint,
    /// Metadata endpoint.
    pub metadata: Endpoint,
    /// Ring capacity, bytes (a multiple of 4096).
    pub ring_capacity_bytes: u64,
    /// Full policy.
    pub full_policy: ringbuffer::FullPolicy,
    /// I/O path.
    pub backend: BackendChoice,
    /// Zero-fill at creation.
    pub zero_fill: bool,
    /// The ring's directory (`{data_dir}/rings/{instrument}`).
    pub ring_directory: PathBuf,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let with_file = |mut error: ConfigError| {
            error.file = Some(path.to_owned());
            error
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| with_file(invalid("", format!("cannot read the configuration: {error}"))))?;
        let config = Config::parse(&text).map_err(with_file)?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| {
            let field = error.span().map(|span| line_of(text, span.start)).unwrap_or_default();
            invalid(field, error.message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the first error names the field, its value and what is expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.trim().is_empty() {
            return Err(invalid("node.name", "must not be empty"));
        }
        if !self.node.data_dir.is_absolute() {
            return Err(invalid(
                "node.data_dir",
                format!("{:?} must be an absolute path", self.node.data_dir),
            ));
        }
        if !(1..=600).contains(&self.node.shutdown_timeout_s) {
            return Err(invalid(
                "node.shutdown_timeout_s",
                format!("{} is out of range (expected 1..=600 seconds)", self.node.shutdown_timeout_s),
            ));
        }
        if self.stream.is_empty() || self.stream.len() > 2 {
            return Err(invalid(
                "stream",
                format!(
                    "{} [[stream]] tables (expected one or two: LSSTCam and/or LATISS)",
                    self.stream.len()
                ),
            ));
        }
        let plans = self.streams()?;
        if plans.len() == 2 && plans[0].instrument == plans[1].instrument {
            return Err(invalid("stream[1].instrument", format!("{:?} appears twice", plans[1].instrument)));
        }
        self.base_location()?;
        self.probe_target()?;
        self.link_options()?;
        let drain = &self.drain;
        if !drain.rate_limit_mb_per_s.is_finite() || drain.rate_limit_mb_per_s < 0.0 {
            return Err(invalid(
                "drain.rate_limit_mb_per_s",
                format!("{} (expected 0 for unlimited, or a positive MB/s)", drain.rate_limit_mb_per_s),
            ));
        }
        if !(1..=86_400).contains(&drain.incomplete_timeout_s) {
            return Err(invalid(
                "drain.incomplete_timeout_s",
                format!("{} is out of range (expected 1..=86400 seconds)", drain.incomplete_timeout_s),
            ));
        }
        for (index, serial) in self.console.serial.iter().enumerate() {
            const RATES: [u32; 8] = [9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600];
            if !RATES.contains(&serial.baud_rate) {
                return Err(invalid(
                    format!("console.serial[{index}].baud_rate"),
                    format!("{} is not a standard rate (expected one of {RATES:?})", serial.baud_rate),
                ));
            }
        }
        for (field, path) in [
            ("console.socket", &self.console.socket),
            ("events.socket", &self.events.socket),
            ("events.file", &self.events.file),
        ] {
            if !path.is_absolute() {
                return Err(invalid(field, format!("{path:?} must be an absolute path")));
            }
        }
        if self.console.socket == self.events.socket {
            return Err(invalid("events.socket", "must differ from console.socket"));
        }
        if let Err(error) = self.logging.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(invalid(
                "logging.level",
                format!("{:?} is not a tracing filter: {error}", self.logging.level),
            ));
        }
        Ok(())
    }

    /// The streams, validated, in file order.
    pub fn streams(&self) -> Result<Vec<StreamPlan>, ConfigError> {
        self.stream.iter().enumerate().map(|(index, stream)| self.stream_plan(index, stream)).collect()
    }

    fn stream_plan(&self, index: usize, stream: &StreamSection) -> Result<StreamPlan, ConfigError> {
        let field = |name: &str| format!("stream[{index}].{name}");
        let focalplane = match stream.instrument.as_str() {
            "LSSTCam" if stream.rafts.is_empty() => Focalplane::lsstcam(),
            "LSSTCam" => {
                let names: Vec<&str> = stream.rafts.iter().map(String::as_str).collect();
                Focalplane::lsstcam_subset(&names)
                    .map_err(|error| invalid(field("rafts"), format!("{:?}: {error}", stream.rafts)))?
            }
            "LATISS" if stream.rafts.is_empty() => Focalplane::latiss(),
            "LATISS" => {
                return Err(invalid(field("rafts"), "LATISS has one CCD; remove `rafts`"));
            }
            other => {
                return Err(invalid(
                    field("instrument"),
                    format!("{other:?} (expected \"LSSTCam\" or \"LATISS\")"),
                ))
            }
        };
        let frames: Endpoint =
            stream.frames.parse().map_err(|error: String| invalid(field("frames"), error))?;
        let metadata: Endpoint =
            stream.metadata.parse().map_err(|error: String| invalid(field("metadata"), error))?;
        if frames == metadata {
            return Err(invalid(field("metadata"), "must differ from `frames`"));
        }
        let capacity = stream.ring_capacity.0;
        if capacity < (64 << 20) || !capacity.is_multiple_of(4096) {
            return Err(invalid(
                field("ring_capacity"),
                format!("{capacity} bytes (expected a multiple of 4096, at least 64 MiB)"),
            ));
        }
        let full_policy = stream.full_policy.parse().map_err(|_| {
            invalid(
                field("full_policy"),
                format!("{:?} (expected \"block\" or \"reject\")", stream.full_policy),
            )
        })?;
        let backend = stream.backend.parse().map_err(|error: String| invalid(field("backend"), error))?;
        Ok(StreamPlan {
            instrument: stream.instrument.clone(),
            focalplane,
            frames,
            metadata,
            ring_capacity_bytes: capacity,
            full_policy,
            backend,
            zero_fill: stream.zero_fill,
            ring_directory: self.node.data_dir.join("rings").join(&stream.instrument),
        })
    }

    /// The base store, validated.
    pub fn base_location(&self) -> Result<BaseLocation, ConfigError> {
        let url = &self.base.url;
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid("base.url", format!("{url:?}: expected file:///ABSOLUTE/PATH")));
            }
            if self.base.endpoint.is_some() {
                return Err(invalid("base.endpoint", "only for an s3:// base"));
            }
            return Ok(BaseLocation::Directory(path));
        }
        if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(invalid("base.url", format!("{url:?}: expected s3://BUCKET")));
            }
            if let Some(endpoint) = &self.base.endpoint {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(invalid(
                        "base.endpoint",
                        format!("{endpoint:?}: expected http://HOST:PORT or https://..."),
                    ));
                }
                if endpoint.starts_with("http://") && !self.base.allow_http {
                    return Err(invalid("base.allow_http", "must be true for an http:// endpoint"));
                }
            }
            return Ok(BaseLocation::S3 { bucket: bucket.to_owned() });
        }
        Err(invalid("base.url", format!("{url:?} (expected file:///PATH or s3://BUCKET)")))
    }

    /// The link monitor's probe target, validated.
    pub fn probe_target(&self) -> Result<ProbeTarget, ConfigError> {
        parse_probe(&self.link.probe).map_err(|message| invalid("link.probe", message))
    }

    /// The link monitor's options, validated.
    pub fn link_options(&self) -> Result<failover::link::LinkOptions, ConfigError> {
        let link = &self.link;
        let options = failover::link::LinkOptions {
            probe_interval: Duration::from_millis(link.probe_interval_ms),
            probe_timeout: Duration::from_millis(link.probe_timeout_ms),
            failures_to_down: link.failures_to_down,
            successes_to_up: link.successes_to_up,
            degraded_rtt: Duration::from_millis(link.degraded_rtt_ms),
            ..failover::link::LinkOptions::default()
        };
        options.validate().map_err(|error| {
            let field = match error.field {
                "probe_interval" => "link.probe_interval_ms",
                "probe_timeout" => "link.probe_timeout_ms",
                "failures_to_down" => "link.failures_to_down",
                "successes_to_up" => "link.successes_to_up",
                "degraded_rtt" => "link.degraded_rtt_ms",
                _ => "link",
            };
            invalid(field, format!("{} {}", error.value, error.reason))
        })?;
        Ok(options)
    }

    /// Where the drain records confirmed objects (`{data_dir}/manifest`).
    pub fn manifest_directory(&self) -> PathBuf {
        self.node.data_dir.join("manifest")
    }

    /// The configuration `summit-node sim` runs with: everything under `data_dir`, LSSTCam
    /// limited to `rafts`, LATISS, a local-directory base behind the simulated fiber, acquiring
    /// at once.
    pub fn simulation(data_dir: &Path, rafts: &[String], probe: SocketAddr) -> Config {
        let path = |name: &str| data_dir.join(name);
        let text_path = |name: &str| path(name).display().to_string();
        let mut streams = vec![StreamSection {
            instrument: "LATISS".into(),
            rafts: Vec::new(),
            frames: format!("unix:{}", text_path("latiss-frames.sock")),
            metadata: format!("unix:{}", text_path("latiss-metadata.sock")),
            ring_capacity: ByteSize(1 << 30),
            full_policy: "block".into(),
            backend: "auto".into(),
            zero_fill: false,
        }];
        if !rafts.is_empty() {
            streams.insert(
                0,
                StreamSection {
                    instrument: "LSSTCam".into(),
                    rafts: rafts.to_vec(),
                    frames: format!("unix:{}", text_path("lsstcam-frames.sock")),
                    metadata: format!("unix:{}", text_path("lsstcam-metadata.sock")),
                    ring_capacity: ByteSize(8 << 30),
                    full_policy: "block".into(),
                    backend: "auto".into(),
                    zero_fill: false,
                },
            );
        }
        Config {
            node: NodeSection {
                name: "summit-sim".into(),
                data_dir: data_dir.to_owned(),
                initial_state: InitialState::Enabled,
                shutdown_timeout_s: 30,
            },
            stream: streams,
            base: BaseSection {
                url: format!("file://{}", text_path("base")),
                endpoint: None,
                region: default_region(),
                allow_http: false,
            },
            link: LinkSection {
                probe: format!("tcp:{probe}"),
                probe_interval_ms: default_probe_interval_ms(),
                probe_timeout_ms: default_probe_timeout_ms(),
                failures_to_down: default_failures_to_down(),
                successes_to_up: default_successes_to_up(),
                degraded_rtt_ms: default_degraded_rtt_ms(),
            },
            drain: DrainSection::default(),
            console: ConsoleSection {
                socket: path("console.sock"),
                socket_group: None,
                operator_group: None,
                serial: Vec::new(),
            },
            events: EventsSection { socket: path("events.sock"), file: path("events.jsonl") },
            logging: LoggingSection::default(),
        }
    }
}

/// `tcp:HOST:PORT` or `http://HOST:PORT/PATH`.
fn parse_probe(text: &str) -> Result<ProbeTarget, String> {
    if let Some(address) = text.strip_prefix("tcp:") {
        return address
            .parse()
            .map(ProbeTarget::Tcp)
            .map_err(|error| format!("{text:?}: {address:?} is not IP:PORT: {error}"));
    }
    if let Some(rest) = text.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let address: SocketAddr = authority.parse().map_err(|error| {
            format!("{text:?}: {authority:?} is not IP:PORT (names are not resolved): {error}")
        })?;
        return Ok(ProbeTarget::Http { address, host: authority.to_owned(), path: path.to_owned() });
    }
    Err(format!("{text:?} (expected tcp:IP:PORT or http://IP:PORT/PATH)"))
}

/// `line N (key)` for an error at byte `offset` of `text`: the line, and the key set on it.
fn line_of(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line = text[..offset].bytes().filter(|byte| *byte == b'\n').count() + 1;
    let start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let key = text[start..].lines().next().and_then(|line| line.split_once('=')).map(|(key, _)| key.trim());
    match key {
        Some(key) if !key.is_empty() && !key.starts_with('[') => format!("line {line} ({key})"),
        _ => format!("line {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../summit-node.example.toml");

    #[test]
    fn the_shipped_example_is_valid() {
        let config = Config::parse(EXAMPLE).expect("the example configuration must be valid");
        assert_eq!(config.stream.len(), 2);
        assert_eq!(config.streams().expect("streams")[0].focalplane.detector_count(), 9);
    }

    fn example_with(from: &str, to: &str) -> Result<Config, ConfigError> {
        assert!(EXAMPLE.contains(from), "the example must contain {from:?}");
        Config::parse(&EXAMPLE.replacen(from, to, 1))
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_line_and_name() {
        let error = example_with("[drain]\n", "[drain]\nrate_limit = 5\n").expect_err("unknown key");
        assert!(error.message.contains("unknown field `rate_limit`"), "{error}");
        assert!(error.field.starts_with("line "), "{error}");
    }

    #[test]
    fn a_bad_value_names_the_field_the_value_and_what_is_expected() {
        let error =
            example_with("ring_capacity = \"64GiB\"", "ring_capacity = \"64 parsecs\"").expect_err("unit");
        assert!(error.message.contains("parsecs"), "{error}");
        let error = example_with("instrument = \"LATISS\"", "instrument = \"HSC\"").expect_err("instrument");
        assert_eq!(error.field, "stream[1].instrument");
        assert!(error.message.contains("\"HSC\"") && error.message.contains("LSSTCam"), "{error}");
        let error = example_with("rafts = [\"R22\"]", "rafts = [\"R99\"]").expect_err("raft");
        assert_eq!(error.field, "stream[0].rafts");
        let error = example_with("probe = \"tcp:", "probe = \"udp:").expect_err("probe");
        assert_eq!(error.field, "link.probe");
        let error = example_with("failures_to_down = 3", "failures_to_down = 1").expect_err("hysteresis");
        assert_eq!(error.field, "link.failures_to_down");
        let error = example_with("baud_rate = 115200", "baud_rate = 115201").expect_err("baud");
        assert_eq!(error.field, "console.serial[0].baud_rate");
        let error = example_with("url = \"s3://", "url = \"ftp://").expect_err("base");
        assert_eq!(error.field, "base.url");
        let error = example_with("full_policy = \"block\"", "full_policy = \"drop\"").expect_err("policy");
        assert_eq!(error.field, "stream[0].full_policy");
        assert!(error.to_string().contains("\"drop\""), "{error}");
    }

    #[test]
    fn sizes_accept_integers_and_units() {
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("64GiB".parse::<ByteSize>(), Ok(ByteSize(64 << 30)));
        assert_eq!("512 MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn the_simulation_configuration_is_valid() {
        let directory = Path::new("/tmp/summit-sim-config-test");
        let config = Config::simulation(directory, &["R22".to_owned()], "127.0.0.1:9".parse().expect("addr"));
        config.validate().expect("simulation defaults must validate");
        assert_eq!(config.streams().expect("streams").len(), 2);
    }
}
