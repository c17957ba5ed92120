//! Real-peer test lab for virtgate.
//!
//! This crate owns the scaffolding that integration tests use to talk to *real* peers instead of
//! mocks: network-namespace labs ([`netns`]), avahi-daemon with a private D-Bus inside a lab
//! node ([`avahi`]), throwaway X.509 PKIs ([`pki`]) and a real libvirtd with the `test` driver
//! over TLS on loopback ([`libvirtd`]), and what the benchmark helpers share ([`bench`]). Spawned
//! programs are wrapped in [`LabProcess`].
//!
//! What it must not do (see `shared/notes/mdns-lab.md` §0 and `real-libvirtd.md`):
//! - send traffic anywhere but loopback or namespaces that a lab itself created; avahi and every
//!   other mDNS speaker run only inside lab namespaces, never in the root network namespace;
//! - stop any process by name: everything is signalled by the PID we spawned or found in our own
//!   namespaces, so parallel tests and the machine's own daemons are left alone;
//! - touch system configuration: daemons get private config, sockets and logs in temp dirs;
//! - skip silently: a missing tool or missing root is a test failure
//!   ([`require_root_and_tools`]), because a skipped real-peer test proves nothing.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one
#![forbid(unsafe_code)]

pub mod avahi;
pub mod bench;
pub mod libvirtd;
pub mod netns;
pub mod pki;
pub mod process;

pub use nix::sys::signal::Signal;
pub use process::{require_python3_modules, require_root_and_tools, tool_path, LabProcess};
/// Re-exported so tests can build certificate validity windows without their own `time` dep.
pub use time;
