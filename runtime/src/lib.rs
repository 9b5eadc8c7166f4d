//! Turn one fully resolved container spec into a running, isolated process
//! tree, and the namespace init that runs as PID 1 inside it.
//!
//! Modules follow the order in which a container comes to life: its
//! [`cgroup`], the clone into new namespaces ([`spawn`]), the filesystem
//! ([`rootfs`]), and the namespace init ([`nsinit`]).

// Runs inside PID 1 and every container's init: no panics.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod cgroup;
pub mod console;
pub mod devices;
pub mod exit;
pub mod identity;
pub mod network;
pub mod nsinit;
pub mod report;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod stdio;
pub mod sys;
pub mod userns;

pub use cgroup::Cgroup;
pub use exit::Exit;
pub use spawn::{spawn, SpawnError, Started};
pub use spec::ContainerSpec;
