//! Turn one fully resolved container spec into a running, isolated process
//! tree, and the namespace init that runs as PID 1 inside it.
//!
//! The public surface is what PID 1 needs: [`spawn`] and its
//! [`Started`] handle and errors, the [`spec`] (plain types, no manifest),
//! the [`cgroup`], [`Exit`], the [`seccomp`] filter, the setup [`report`],
//! the [`rootfs`] plan, the [`sys`] wrappers PID 1 shares, and what PID 1
//! makes [`ahead`] of its first start.
//!
//! Modules follow the order in which a container comes to life: its
//! [`cgroup`], the clone into new namespaces ([`spawn`]), the filesystem
//! ([`rootfs`]), and the namespace init (`nsinit`).

// Runs inside PID 1 and every container's init: no panics.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod ahead;
mod bridge;
pub mod cgroup;
mod console;
pub mod devices;
pub mod exec;
mod exit;
mod identity;
pub mod netlink;
pub mod network;
pub mod nftables;
mod nsinit;
pub mod report;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
mod stdio;
pub mod sys;
mod userns;

pub use ahead::Ahead;
pub use cgroup::Cgroup;
pub use exit::Exit;
pub use exit::SETUP_FAILED;
pub use spawn::{spawn, SpawnError, Started};
pub use spec::{ContainerSpec, Device, Limits, Network};
