//! Settings: what is fixed at creation ([`CreateOptions`]) and what is chosen at each open
//! ([`RingOptions`]). Every value is checked, and a bad one is an [`Error::InvalidConfig`]
//! naming the field, the value and what is allowed.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, CURSOR_NAME_BYTES, MAX_CURSORS};

/// What happens when an append does not fit because required cursors have not moved on.
/// Undrained data is never overwritten under either policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Back-pressure: the append returns [`Error::WouldBlock`] (or waits, with
    /// `Ring::append_blocking`) until space is reclaimed.
    Block,
    /// The record is refused with [`Error::Rejected`] and counted in `rejected_full_total`.
    Reject,
}

impl std::str::FromStr for FullPolicy {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "block" => Ok(Self::Block),
            "reject" => Ok(Self::Reject),
            other => Err(Error::InvalidConfig {
                field: "full_policy",
                value: format!("{other:?}"),
                reason: "expected \"block\" or \"reject\"".into(),
            }),
        }
    }
}

/// Default largest payload: a 16-amplifier segment (4.7 MB) fits three times over.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 16 << 20;

/// Fixed at creation and stored in every checkpoint.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Size of the data file, a multiple of 4096 (e.g. 64 GiB).
    pub capacity_bytes: u64,
    /// Stream id stamped on every record (LSSTCam, LATISS, metadata, ...).
    pub stream_id: u32,
    /// Largest payload a record may carry. At most an eighth of the capacity.
    pub max_payload_bytes: u32,
    /// Ring id; `None` picks a random one (tests fix it for reproducibility).
    pub ring_id: Option<u64>,
    /// Destroy an existing ring in the directory. Never implied.
    pub force: bool,
    /// Write every block of the data file once at creation, so the first lap runs at the
    /// disk's steady-state speed (see `FileStorage::create`). Slow for large rings.
    pub zero_fill: bool,
}

impl CreateOptions {
    /// A ring of `capacity_bytes` for `stream_id`; maximum payload 16 MiB, or an eighth of the
    /// capacity for rings smaller than 128 MiB.
    pub fn new(capacity_bytes: u64, stream_id: u32) -> Self {
        let max_payload_bytes =
            u32::try_from((capacity_bytes / 8).min(DEFAULT_MAX_PAYLOAD_BYTES)).expect("at most 16 MiB");
        Self { capacity_bytes, stream_id, max_payload_bytes, ring_id: None, force: false, zero_fill: false }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.capacity_bytes == 0 || !self.capacity_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(Error::InvalidConfig {
                field: "capacity_bytes",
                value: self.capacity_bytes.to_string(),
                reason: "must be a positive multiple of 4096".into(),
            });
        }
        let largest_record_bytes = crate::layout::stored_record_bytes(u64::from(self.max_payload_bytes));
        if 2 * largest_record_bytes - BLOCK_BYTES > self.capacity_bytes {
            return Err(Error::InvalidConfig {
                field: "capacity_bytes",
                value: self.capacity_bytes.to_string(),
                reason: format!(
                    "must hold a largest record plus the padding before it at a lap end ({} bytes for a \
                     maximum payload of {} bytes)",
                    2 * largest_record_bytes - BLOCK_BYTES,
                    self.max_payload_bytes
                ),
            });
        }
        if self.max_payload_bytes == 0 || u64::from(self.max_payload_bytes) > self.capacity_bytes / 8 {
            return Err(Error::InvalidConfig {
                field: "max_payload_bytes",
                value: self.max_payload_bytes.to_string(),
                reason: format!(
                    "must be between 1 and an eighth of the capacity ({} bytes)",
                    self.capacity_bytes / 8
                ),
            });
        }
        Ok(())
    }
}

/// A named reader to ensure exists when the ring is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorSpec {
    /// Name (1 to 24 bytes of UTF-8).
    pub name: String,
    /// Whether space is reclaimed only after this cursor has moved past it.
    pub required: bool,
}

impl CursorSpec {
    /// A cursor that holds back reclamation (like `drain`).
    pub fn required(name: &str) -> Self {
        Self { name: name.into(), required: true }
    }
    /// A cursor that may be overrun when the ring needs space (like `prompt`).
    pub fn optional(name: &str) -> Self {
        Self { name: name.into(), required: false }
    }
}

/// Chosen at each open.
#[derive(Clone, Debug)]
pub struct RingOptions {
    /// Behaviour when full.
    pub full_policy: FullPolicy,
    /// Cursors to create if missing (and whose `required` flag to apply). Cursors already in
    /// the ring but not listed are kept as they are: a required cursor is never dropped silently.
    pub cursors: Vec<CursorSpec>,
    /// A checkpoint is written after this many bytes were appended; bounds recovery time.
    pub checkpoint_interval_bytes: u64,
    /// Fill fractions at which a warning is logged and recorded as an event.
    pub fill_thresholds: Vec<f64>,
    /// Open the data file with `O_DIRECT` where the filesystem allows it.
    pub direct_io: bool,
    /// Source of time.
    pub clock: Arc<dyn Clock>,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            full_policy: FullPolicy::Block,
            cursors: vec![
                CursorSpec::required("drain"),
                CursorSpec::optional("prompt"),
                CursorSpec::optional("archive"),
            ],
            checkpoint_interval_bytes: 256 << 20,
            fill_thresholds: vec![0.80, 0.95],
            direct_io: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl RingOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.cursors.len() > MAX_CURSORS {
            return Err(Error::InvalidConfig {
                field: "cursors",
                value: self.cursors.len().to_string(),
                reason: format!("at most {MAX_CURSORS} cursors"),
            });
        }
        for spec in &self.cursors {
            validate_cursor_name(&spec.name)?;
        }
        if self.checkpoint_interval_bytes < BLOCK_BYTES {
            return Err(Error::InvalidConfig {
                field: "checkpoint_interval_bytes",
                value: self.checkpoint_interval_bytes.to_string(),
                reason: "must be at least 4096".into(),
            });
        }
        for &threshold in &self.fill_thresholds {
            if !(threshold > 0.0 && threshold <= 1.0) {
                return Err(Error::InvalidConfig {
                    field: "fill_thresholds",
                    value: threshold.to_string(),
                    reason: "each threshold must be in (0, 1]".into(),
                });
            }
        }
        Ok(())
    }
}

pub(crate) fn validate_cursor_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > CURSOR_NAME_BYTES || name.contains('\0') {
        return Err(Error::InvalidConfig {
            field: "cursor name",
            value: format!("{name:?}"),
            reason: format!("must be 1 to {CURSOR_NAME_BYTES} bytes of UTF-8 without NUL"),
        });
    }
    Ok(())
}

/// Parses sizes such as `64GiB`, `512MiB`, `4096`, `1G` (binary units).
pub fn parse_size_bytes(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => 0,
    };
    let value: Option<u64> = digits.parse().ok();
    match (value, multiplier) {
        (Some(value), multiplier) if multiplier > 0 => value.checked_mul(multiplier).ok_or(()),
        _ => Err(()),
    }
    .map_err(|()| Error::InvalidConfig {
        field: "size",
        value: format!("{text:?}"),
        reason: "expected a number with an optional unit K, M, G or T (binary, e.g. 64GiB)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size_bytes("64GiB").unwrap(), 64 << 30);
        assert_eq!(parse_size_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size_bytes("4096").unwrap(), 4096);
        let error = parse_size_bytes("12 parsecs").unwrap_err().to_string();
        assert!(error.contains("12 parsecs"), "{error}");
    }

    #[test]
    fn bad_options_name_the_field() {
        let mut create = CreateOptions::new(1 << 20, 1);
        create.capacity_bytes = 1000;
        assert!(create.validate().unwrap_err().to_string().contains("capacity_bytes"));
        let options = RingOptions { cursors: vec![CursorSpec::required("")], ..RingOptions::default() };
        assert!(options.validate().unwrap_err().to_string().contains("cursor name"));
        assert!("sometimes".parse::<FullPolicy>().unwrap_err().to_string().contains("full_policy"));
    }
}
