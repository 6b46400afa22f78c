//! CSC events as JSON lines (being built).
