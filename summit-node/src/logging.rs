//! Logging set-up (being built).
