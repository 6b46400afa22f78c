//! Simulation mode (being built).
