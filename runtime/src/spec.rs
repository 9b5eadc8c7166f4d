//! A container fully resolved for the runtime: host paths of its layers,
//! C strings ready for execve.

use std::ffi::CString;

use cairn_images::manifest::{Container, Limits};

/// Base directory for per-container state on the host's /run.
pub const STATE_DIR: &str = "/run/cairn/containers";
/// Directory holding the control socket; bound into containers that may use it.
pub const CONTROL_DIR: &str = "/run/cairn/control";

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Host directories of its mounted layers, lowest first.
    pub layer_dirs: Vec<String>,
    /// Size cap of the writable scratch tmpfs.
    pub scratch_bytes: u64,
    /// Entrypoint and arguments.
    pub argv: Vec<CString>,
    /// Environment.
    pub env: Vec<CString>,
    /// Working directory.
    pub cwd: String,
    /// UTS hostname.
    pub hostname: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// cgroup limits.
    pub limits: Limits,
    /// Whether the control socket directory is bound in.
    pub control: bool,
}

/// Why a manifest container cannot be turned into a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A layer is not mounted (missing or failed verification).
    LayerUnavailable(String),
    /// A string holds a NUL byte.
    Nul(String),
}

impl core::fmt::Display for SpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpecError::LayerUnavailable(l) => write!(f, "layer {l} is not available"),
            SpecError::Nul(s) => write!(f, "string {s:?} contains a NUL byte"),
        }
    }
}

fn c(s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(s.replace('\0', "\\0")))
}

impl ContainerSpec {
    /// Resolve a manifest container; `layer_dir` maps a layer name to the
    /// directory it is mounted on, or `None` if it is unavailable.
    pub fn resolve(
        c_: &Container,
        layer_dir: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SpecError> {
        let layer_dirs = c_
            .layers
            .iter()
            .map(|l| layer_dir(l).ok_or_else(|| SpecError::LayerUnavailable(l.as_str().into())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: c_.name.as_str().into(),
            layer_dirs,
            scratch_bytes: c_.limits.scratch_bytes,
            argv: c_.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            env: c_.env.iter().map(|e| c(e)).collect::<Result<_, _>>()?,
            cwd: c_.cwd.as_str().into(),
            hostname: c_.hostname.as_str().into(),
            uid: c_.uid,
            gid: c_.gid,
            limits: c_.limits,
            control: c_.control,
        })
    }

    /// The container's state directory on the host.
    pub fn state_dir(&self) -> String {
        format!("{STATE_DIR}/{}", self.name)
    }
}
