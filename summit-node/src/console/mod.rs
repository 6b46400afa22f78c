//! The operator console (being built).
