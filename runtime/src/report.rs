//! The child's setup report: a fixed binary record on the report pipe.
//!
//! A container's init and its entrypoint process write at most one record,
//! [`LEN`] bytes in one `write` (under `PIPE_BUF`, so atomic), when a setup
//! step or the `execve` of the entrypoint fails: a magic byte, the stage as
//! a `u8`, the failing step of the rootfs plan as a little-endian `u16`
//! (`0xffff` for none; PID 1 holds the same plan and names its path), and
//! the errno as a little-endian `i32`. A
//! successful `execve` closes the last (close-on-exec) write end, so PID 1
//! reads EOF with nothing before it. The failing path of an exec is not in
//! the record: it is `argv[0]`, which PID 1 already knows.

use core::fmt;

/// Length of a record.
pub const LEN: usize = 8;

/// First byte of every record (guards against anything else written to
/// the pipe by mistake).
const MAGIC: u8 = 0xC5;

/// The step that failed, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Making the pty's slave the child's stdio.
    Console = 1,
    /// PID 1 did not write the user namespace's id maps.
    IdMaps = 2,
    /// Becoming root of the new user namespace.
    BecomeRoot = 3,
    /// Loopback up, or joining another container's network namespace.
    Network = 4,
    /// Building the root filesystem (mounts, pivot_root).
    Rootfs = 5,
    /// sethostname.
    Hostname = 6,
    /// Taking the pty as controlling terminal.
    ControllingTerminal = 7,
    /// Forking the entrypoint's process.
    Fork = 8,
    /// Making the entrypoint the terminal's foreground process group.
    Foreground = 9,
    /// Resource limits (setrlimit).
    Rlimits = 10,
    /// Dropping the capability bounding set.
    Bounding = 11,
    /// Installing the seccomp filter.
    Seccomp = 12,
    /// setgroups, setgid, setuid.
    Identity = 13,
    /// Setting the capability sets.
    Capabilities = 14,
    /// chdir to the working directory.
    Cwd = 15,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs = 16,
    /// execve of the entrypoint (`argv[0]`).
    Exec = 17,
    /// Closing the descriptors inherited from PID 1 (close_range).
    InheritedFds = 18,
    /// `cairn-ctl exec`: joining the container (its cgroup, a namespace
    /// by its index in `exec::NAMESPACES`, or its root: the step).
    Join = 19,
}

impl Stage {
    /// Every stage, for decoding.
    const ALL: [Stage; 19] = [
        Stage::Console,
        Stage::IdMaps,
        Stage::BecomeRoot,
        Stage::Network,
        Stage::Rootfs,
        Stage::Hostname,
        Stage::ControllingTerminal,
        Stage::Fork,
        Stage::Foreground,
        Stage::Rlimits,
        Stage::Bounding,
        Stage::Seccomp,
        Stage::Identity,
        Stage::Capabilities,
        Stage::Cwd,
        Stage::NoNewPrivs,
        Stage::Exec,
        Stage::InheritedFds,
        Stage::Join,
    ];

    /// Short name, for events.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Console => "console",
            Stage::IdMaps => "id-maps",
            Stage::BecomeRoot => "become-root",
            Stage::Network => "network",
            Stage::Rootfs => "rootfs",
            Stage::Hostname => "hostname",
            Stage::ControllingTerminal => "controlling-terminal",
            Stage::Fork => "fork",
            Stage::Foreground => "foreground",
            Stage::Rlimits => "rlimits",
            Stage::Bounding => "bounding-set",
            Stage::Seccomp => "seccomp",
            Stage::Identity => "identity",
            Stage::Capabilities => "capabilities",
            Stage::Cwd => "cwd",
            Stage::NoNewPrivs => "no-new-privs",
            Stage::Exec => "exec",
            Stage::InheritedFds => "inherited-fds",
            Stage::Join => "join",
        }
    }

    fn from_u8(b: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == b)
    }
}

/// A failed step and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// What failed.
    pub stage: Stage,
    /// With [`Stage::Rootfs`]: the index of the failed step in the plan.
    pub step: Option<u16>,
    /// Why (errno; 0 if the step had none, e.g. the id maps not written).
    pub errno: i32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.stage.name())?;
        if let Some(step) = self.step {
            write!(f, " step {step}")?;
        }
        write!(f, " {}", ErrnoName(self.errno))
    }
}

/// An errno by its symbolic name, or `errno<n>` for one without a name here.
#[derive(Debug, Clone, Copy)]
pub struct ErrnoName(pub i32);

impl fmt::Display for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::sys::errno_name(self.0) {
            "errno" => write!(f, "errno{}", self.0),
            name => f.write_str(name),
        }
    }
}

/// Why bytes on the report pipe are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer or more bytes than a record.
    #[error("report of {0} bytes, want 8")]
    Length(usize),
    /// The first byte is not the magic.
    #[error("report without its magic byte")]
    Magic,
    /// A stage number this version does not know.
    #[error("report with unknown stage {0}")]
    Stage(u8),
}

/// The step field of a record without a step.
const NO_STEP: u16 = 0xffff;

/// The record for `r`.
pub fn encode(r: Report) -> [u8; LEN] {
    let e = r.errno.to_le_bytes();
    let s = r.step.unwrap_or(NO_STEP).to_le_bytes();
    [MAGIC, r.stage as u8, s[0], s[1], e[0], e[1], e[2], e[3]]
}

/// The report in `bytes` (everything read before EOF, never empty).
pub fn decode(bytes: &[u8]) -> Result<Report, DecodeError> {
    let [magic, stage, s0, s1, e0, e1, e2, e3] = *bytes else {
        return Err(DecodeError::Length(bytes.len()));
    };
    if magic != MAGIC {
        return Err(DecodeError::Magic);
    }
    let stage = Stage::from_u8(stage).ok_or(DecodeError::Stage(stage))?;
    let step = Some(u16::from_le_bytes([s0, s1])).filter(|s| *s != NO_STEP);
    Ok(Report { stage, step, errno: i32::from_le_bytes([e0, e1, e2, e3]) })
}

/// In a child about to `_exit`: write the record for (`stage`, `errno`)
/// on `fd` (errors ignored: PID 1 then sees the exit without a report).
pub fn write(fd: &impl std::os::fd::AsFd, stage: Stage, errno: i32) {
    write_report(fd, Report { stage, step: None, errno });
}

/// In a child about to `_exit`: write the record `r`.
pub fn write_report(fd: &impl std::os::fd::AsFd, r: Report) {
    let _ = crate::sys::write_all(fd, &encode(r));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_round_trips_with_any_errno() {
        for stage in Stage::ALL {
            for errno in [0, libc::ENOENT, libc::EACCES, i32::MAX, -1, i32::MIN] {
                for step in [None, Some(0), Some(41), Some(0xfffe)] {
                    let r = Report { stage, step, errno };
                    assert_eq!(decode(&encode(r)), Ok(r));
                }
                let r = Report { stage, step: None, errno };
                let bytes = encode(r);
                assert_eq!(bytes.len(), LEN);
                assert_eq!(decode(&bytes), Ok(r));
            }
        }
    }

    #[test]
    fn stage_numbers_are_distinct_and_fixed() {
        let mut seen: Vec<u8> = Stage::ALL.iter().map(|s| *s as u8).collect();
        seen.dedup();
        assert_eq!(seen, (1..=19).collect::<Vec<u8>>());
        assert_eq!(
            encode(Report { stage: Stage::Exec, step: None, errno: libc::ENOENT }),
            [0xC5, 17, 0xff, 0xff, 2, 0, 0, 0]
        );
        let r = Report { stage: Stage::Rootfs, step: Some(0x0102), errno: libc::ELOOP };
        assert_eq!(encode(r), [0xC5, 5, 0x02, 0x01, 40, 0, 0, 0]);
        assert_eq!(r.to_string(), "rootfs step 258 ELOOP");
        let j = Report { stage: Stage::Join, step: Some(7), errno: libc::EBUSY };
        assert_eq!(j.to_string(), "join step 7 EBUSY");
    }

    #[test]
    fn short_long_and_garbage_input_is_refused() {
        let good = encode(Report { stage: Stage::Rootfs, step: None, errno: libc::EPERM });
        for n in 0..LEN {
            assert_eq!(decode(&good[..n]), Err(DecodeError::Length(n)));
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Length(9)));
        assert_eq!(decode(b"setup x:"), Err(DecodeError::Magic));
        let mut bad = good;
        bad[1] = 0;
        assert_eq!(decode(&bad), Err(DecodeError::Stage(0)));
        bad[1] = 20;
        assert_eq!(decode(&bad), Err(DecodeError::Stage(20)));
        bad[1] = 255;
        assert_eq!(decode(&bad), Err(DecodeError::Stage(255)));
    }

    #[test]
    fn display_names_stage_and_errno() {
        assert_eq!(Report { stage: Stage::Exec, step: None, errno: libc::ENOENT }.to_string(), "exec ENOENT");
        assert_eq!(Report { stage: Stage::Rootfs, step: None, errno: libc::EPERM }.to_string(), "rootfs EPERM");
        assert_eq!(Report { stage: Stage::Fork, step: None, errno: 4095 }.to_string(), "fork errno4095");
    }
}
