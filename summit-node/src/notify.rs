//! sd_notify (being built).
