//! A container fully resolved for the runtime: host paths of its layers,
//! C strings ready for execve.

use std::ffi::CString;

use cairn_images::manifest::{Container, Limits, Network, Rlimit, UserNamespace};

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
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capabilities kept (bit n = capability n).
    pub capabilities: u64,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Install the default seccomp filter.
    pub seccomp: bool,
    /// Extra syscalls to deny.
    pub seccomp_deny: Vec<String>,
    /// Allow new user namespaces.
    pub allow_userns: bool,
    /// Device nodes to create: (path in the container, host device, mode).
    pub devices: Vec<(String, String, u16)>,
    /// Network namespace.
    pub network: Network,
    /// Resource limits of the entrypoint.
    pub rlimits: Vec<Rlimit>,
    /// Signal sent to the processes left when the entrypoint exits.
    pub stop_signal: i32,
    /// Time they get before SIGKILL.
    pub stop_grace_ms: u32,
    /// Forward signals to the entrypoint's process group.
    pub signal_group: bool,
    /// A pseudo-terminal as stdio and controlling terminal.
    pub console: bool,
    /// A user namespace of its own, with these id maps.
    pub userns: Option<UserNamespace>,
}

/// Why a manifest container cannot be turned into a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A layer is not mounted (missing or failed verification).
    LayerUnavailable(String),
    /// A string holds a NUL byte.
    Nul(String),
    /// A device source that does not exist on this device.
    DeviceUnavailable(String),
}

impl core::fmt::Display for SpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpecError::LayerUnavailable(l) => write!(f, "layer {l} is not available"),
            SpecError::Nul(s) => write!(f, "string {s:?} contains a NUL byte"),
            SpecError::DeviceUnavailable(d) => write!(f, "device source {d} is not available"),
        }
    }
}

fn c(s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(s.replace('\0', "\\0")))
}

impl ContainerSpec {
    /// Resolve a manifest container; `layer_dir` maps a layer name to the
    /// directory it is mounted on, or `None` if it is unavailable;
    /// `device` maps a device source (`/dev/...` or `partition:NAME`) to a
    /// host device node.
    pub fn resolve(
        c_: &Container,
        layer_dir: impl Fn(&str) -> Option<String>,
        device: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SpecError> {
        let devices = c_
            .security
            .devices
            .iter()
            .map(|d| {
                device(&d.source)
                    .map(|host| (d.path.as_str().to_owned(), host, d.mode))
                    .ok_or_else(|| SpecError::DeviceUnavailable(d.source.as_str().into()))
            })
            .collect::<Result<_, _>>()?;
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
            limits: c_.limits.clone(),
            control: c_.control,
            groups: c_.groups.to_vec(),
            capabilities: c_.security.capabilities,
            no_new_privs: c_.security.no_new_privs,
            readonly_rootfs: c_.security.readonly_rootfs,
            seccomp: c_.security.seccomp,
            seccomp_deny: c_.security.seccomp_deny.iter().map(|s| s.as_str().to_owned()).collect(),
            allow_userns: c_.security.allow_userns,
            devices,
            network: c_.network.clone(),
            rlimits: c_.limits.rlimits.to_vec(),
            stop_signal: i32::from(c_.stop.signal),
            stop_grace_ms: c_.stop.grace_ms,
            signal_group: c_.signal_group,
            console: c_.console,
            userns: c_.security.userns.clone(),
        })
    }

    /// The container's state directory on the host.
    pub fn state_dir(&self) -> String {
        format!("{STATE_DIR}/{}", self.name)
    }
}
