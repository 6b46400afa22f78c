//! `summit-node`: the summit appliance daemon.
//!
//! One binary, `summit-node`, wires the crates together: it reads the configuration (the only
//! crate that does), opens the rings, runs the ingest of each stream, the link monitor and the
//! drain, presents the node to the observatory control system as a commandable device, serves the
//! operator console on a serial port and a Unix socket, talks to systemd, and in `sim` mode runs
//! the whole appliance on a laptop against the simulated camera, header service and fiber.
//!
//! - [`config`]: the TOML configuration, validated field by field (`check-config`).
//! - [`status`]: the snapshot views and the [`status::NodeControl`] trait, the one interface
//!   between the running node and everything that shows or commands it.
//! - [`node`]: the running node: rings, ingest, link monitor, drain, state.
//! - [`csc`]: the observatory-control state machine, commands and acknowledgement codes.
//! - [`events`]: CSC events as JSON lines on a local socket and a file, and the heartbeat.
//! - [`console`]: the operator console's line discipline, command language and servers.
//! - [`notify`]: sd_notify (READY, STATUS, WATCHDOG, STOPPING) over `NOTIFY_SOCKET`.
//! - [`logging`]: tracing set-up (human or JSON) and the recent-lines buffer `log [n]` shows.
//! - [`sim`]: `summit-node sim`: the appliance against simulated hardware, with embedded defaults.
#![forbid(unsafe_code)]

pub mod config;
pub mod console;
pub mod csc;
pub mod events;
pub mod logging;
pub mod node;
pub mod notify;
pub mod sim;
pub mod status;
