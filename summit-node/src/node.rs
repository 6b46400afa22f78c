//! The running node (being built).
