//! `whoami`: what the `exec` scenario compares between a
//! container's entrypoint and a command `cairn-ctl exec` ran in it.

use crate::out::V;
use crate::{say, sys};

/// `whoami LABEL [stay]`: identity, capabilities, seccomp, namespaces,
/// root, cwd and cgroup as this process sees them; then pause if `stay`.
pub fn whoami(label: &str, stay: bool) -> i32 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut fields = String::new();
    let mut add = |k: &str, v: &str| fields.push_str(&format!(" {k}={}", V(v)));
    for (k, status) in [
        ("groups", "Groups"),
        ("eff", "CapEff"),
        ("prm", "CapPrm"),
        ("bnd", "CapBnd"),
        ("amb", "CapAmb"),
        ("nnp", "NoNewPrivs"),
        ("seccomp", "Seccomp"),
        ("filters", "Seccomp_filters"),
    ] {
        add(k, &sys::status_field(&st, status).unwrap_or_else(|| "missing".into()));
    }
    for n in ["pid", "mnt", "net", "uts", "ipc", "cgroup", "user"] {
        let id = std::fs::read_link(format!("/proc/self/ns/{n}")).map_or_else(
            |e| format!("error:{}", e.raw_os_error().unwrap_or(0)),
            |p| p.to_string_lossy().trim_start_matches(n).trim_matches(|c| c == ':' || c == '[' || c == ']').to_owned(),
        );
        add(&format!("{n}ns"), &id);
    }
    let root = std::fs::metadata("/").map_or_else(
        |e| format!("error:{}", e.raw_os_error().unwrap_or(0)),
        |m| format!("{}:{}", std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)),
    );
    add("root", &root);
    add("cwd", &std::env::current_dir().map_or_else(|_| "error".into(), |p| p.to_string_lossy().into_owned()));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    add("cgroup", cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("missing"));
    add("pid1_comm", &sys::read_trim("/proc/1/comm").unwrap_or_else(|| "missing".into()));
    // What `cairn-ctl exec -e CAIRN_PROBE=...` set, if anything.
    add("probe_env", &std::env::var("CAIRN_PROBE").unwrap_or_else(|_| "unset".into()));
    say!("event=whoami label={} ppid={} uid={} gid={}{fields}", V(label), sys::ppid(), sys::uid(), sys::gid());
    if stay {
        sys::pause_forever();
    }
    0
}
