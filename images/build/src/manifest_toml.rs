//! A manifest printed back as an appliance file (`cairn manifest inspect`).
//!
//! The output is valid appliance TOML that compiles to the same manifest:
//! layers appear by digest, size and verity root hash (`digest =
//! "sha256:..."`; the salt and tree offset follow from those), every field
//! is written out even when it has its default value, and capabilities as
//! `cap_drop = ["ALL"]` plus the kept set, so nothing depends on defaults
//! that could change between cairn versions.

use std::collections::BTreeMap;

use toml::{Table, Value};

use cairn_format::manifest::{Container, LayerCheck, Manifest, Network, RestartPolicy, CAPABILITY_NAMES};

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn int(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(items.into_iter().map(s).collect())
}

/// Signal names the appliance format knows, for readability.
fn signal_name(n: u8) -> String {
    match n {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        3 => "SIGQUIT".into(),
        9 => "SIGKILL".into(),
        10 => "SIGUSR1".into(),
        12 => "SIGUSR2".into(),
        14 => "SIGALRM".into(),
        15 => "SIGTERM".into(),
        30 => "SIGPWR".into(),
        other => other.to_string(),
    }
}

fn rlimit_value(v: u64) -> Value {
    if v == u64::MAX {
        s("unlimited")
    } else {
        int(v)
    }
}

fn container(c: &Container) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), s(&c.name));
    t.insert("layers".into(), strings(c.layers.iter().map(|l| l.as_str())));
    t.insert("argv".into(), strings(c.argv.iter().map(|a| a.as_str())));
    t.insert("env".into(), strings(c.env.iter().map(|e| e.as_str())));
    t.insert("cwd".into(), s(&c.cwd));
    t.insert("hostname".into(), s(&c.hostname));
    t.insert("uid".into(), int(c.uid.into()));
    t.insert("gid".into(), int(c.gid.into()));
    t.insert("groups".into(), Value::Array(c.groups.iter().map(|g| int((*g).into())).collect()));
    t.insert("depends_on".into(), strings(c.depends_on.iter().map(|d| d.as_str())));
    t.insert("permissions".into(), strings(c.permissions.iter().map(|p| p.name())));
    t.insert("log_size".into(), int(c.log_size.into()));
    if let Some(h) = &c.health {
        let mut health = Table::new();
        match &h.probe {
            cairn_format::manifest::HealthProbe::Heartbeat => {
                health.insert("type".into(), s("heartbeat"));
            }
            cairn_format::manifest::HealthProbe::Command(argv) => {
                health.insert("type".into(), s("command"));
                health.insert("command".into(), strings(argv.iter().map(|a| a.as_str())));
            }
        }
        health.insert("interval_ms".into(), int(h.interval_ms.into()));
        health.insert("timeout_ms".into(), int(h.timeout_ms.into()));
        health.insert("retries".into(), int(h.retries.into()));
        health.insert("start_period_ms".into(), int(h.start_period_ms.into()));
        t.insert("health".into(), Value::Table(health));
    }
    t.insert("signal_group".into(), Value::Boolean(c.signal_group));
    t.insert("console".into(), Value::Boolean(c.console));
    t.insert("critical".into(), Value::Boolean(c.critical));
    let network = match &c.network {
        Network::None => "none".to_owned(),
        Network::Host => "host".to_owned(),
        Network::Join(n) => format!("container:{n}"),
    };
    t.insert("network".into(), s(&network));

    let l = &c.limits;
    let mut limits = Table::new();
    // Unlimited is written as "max": a missing key would compile to the
    // default limit, not to the same manifest.
    limits.insert("memory".into(), l.memory_max.map_or_else(|| s("max"), int));
    if let Some(cpu) = l.cpu_max {
        limits.insert("cpus".into(), Value::Float(f64::from(cpu.quota_us) / f64::from(cpu.period_us.max(1))));
    }
    limits.insert("pids".into(), l.pids_max.map_or_else(|| s("max"), |p| int(p.into())));
    limits.insert("scratch".into(), int(l.scratch_bytes));
    if let Some(v) = l.memory_high {
        limits.insert("memory_high".into(), int(v));
    }
    if let Some(v) = l.memory_swap_max {
        limits.insert("memory_swap".into(), int(v));
    }
    if let Some(v) = l.cpu_weight {
        limits.insert("cpu_weight".into(), int(v.into()));
    }
    if let Some(v) = &l.cpuset_cpus {
        limits.insert("cpuset".into(), s(v));
    }
    let io: Vec<Value> = l
        .io_max
        .iter()
        .map(|io| {
            let mut e = Table::new();
            e.insert("device".into(), s(&io.device));
            for (k, v) in [("rbps", io.rbps), ("wbps", io.wbps), ("riops", io.riops), ("wiops", io.wiops)] {
                if let Some(v) = v {
                    e.insert(k.into(), int(v));
                }
            }
            Value::Table(e)
        })
        .collect();
    limits.insert("io".into(), Value::Array(io));
    let mut rl = Table::new();
    for r in &l.rlimits {
        rl.insert(r.resource.name().into(), Value::Array(vec![rlimit_value(r.soft), rlimit_value(r.hard)]));
    }
    limits.insert("rlimits".into(), Value::Table(rl));
    t.insert("limits".into(), Value::Table(limits));

    let mut restart = Table::new();
    let policy = match c.restart.policy {
        RestartPolicy::Never => "never",
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure { max_restarts } => {
            restart.insert("max_restarts".into(), int(max_restarts.into()));
            "on-failure"
        }
    };
    restart.insert("policy".into(), s(policy));
    restart.insert("backoff_initial_ms".into(), int(c.restart.backoff_initial_ms.into()));
    restart.insert("backoff_max_ms".into(), int(c.restart.backoff_max_ms.into()));
    t.insert("restart".into(), Value::Table(restart));

    let mut stop = Table::new();
    stop.insert("signal".into(), s(&signal_name(c.stop.signal)));
    stop.insert("grace_ms".into(), int(c.stop.grace_ms.into()));
    t.insert("stop".into(), Value::Table(stop));

    let sec = &c.security;
    let mut st = Table::new();
    st.insert("cap_drop".into(), strings(["ALL"]));
    let kept = CAPABILITY_NAMES.iter().enumerate().filter(|(i, _)| sec.capabilities & (1u64 << i) != 0);
    st.insert("cap_add".into(), strings(kept.map(|(_, n)| *n)));
    st.insert("no_new_privs".into(), Value::Boolean(sec.no_new_privs));
    st.insert("readonly_rootfs".into(), Value::Boolean(sec.readonly_rootfs));
    st.insert("seccomp".into(), Value::Boolean(sec.seccomp));
    st.insert("seccomp_deny".into(), strings(sec.seccomp_deny.iter().map(|d| d.as_str())));
    st.insert("allow_userns".into(), Value::Boolean(sec.allow_userns));
    let devices: Vec<Value> = sec
        .devices
        .iter()
        .map(|d| {
            let mut e = Table::new();
            e.insert("path".into(), s(&d.path));
            e.insert("source".into(), s(&d.source.to_string()));
            e.insert("mode".into(), int(d.mode.into()));
            Value::Table(e)
        })
        .collect();
    st.insert("devices".into(), Value::Array(devices));
    if let Some(u) = &sec.userns {
        let map = |m: &[cairn_format::manifest::IdRange]| {
            Value::Array(
                m.iter()
                    .map(|r| Value::Array(vec![int(r.inside.into()), int(r.outside.into()), int(r.count.into())]))
                    .collect(),
            )
        };
        let mut ut = Table::new();
        ut.insert("uid_map".into(), map(&u.uid_map));
        ut.insert("gid_map".into(), map(&u.gid_map));
        st.insert("userns".into(), Value::Table(ut));
    }
    t.insert("security".into(), Value::Table(st));
    let mounts: Vec<Value> = c
        .mounts
        .iter()
        .map(|mt| {
            let mut e = Table::new();
            e.insert("volume".into(), s(&mt.volume));
            e.insert("path".into(), s(&mt.path));
            e.insert("readonly".into(), Value::Boolean(mt.readonly));
            Value::Table(e)
        })
        .collect();
    t.insert("mounts".into(), Value::Array(mounts));
    // Each at the address the build fixed (pinned, so it compiles back to
    // the same manifest).
    let networks: Vec<Value> = c
        .networks
        .iter()
        .map(|a| {
            let mut e = Table::new();
            e.insert("name".into(), s(&a.network));
            e.insert("address".into(), s(&cairn_format::network::addr_text(a.address)));
            Value::Table(e)
        })
        .collect();
    t.insert("networks".into(), Value::Array(networks));
    if !c.publish.is_empty() {
        t.insert("publish".into(), Value::Array(c.publish.iter().map(|p| s(&p.to_string())).collect()));
    }
    t
}

/// The manifest as appliance TOML.
pub fn to_toml(m: &Manifest) -> String {
    let mut root = Table::new();
    root.insert("appliance".into(), s(&m.appliance));
    root.insert("version".into(), int(m.version));
    root.insert("compatible".into(), s(&m.compatible));
    match m.layer_check {
        LayerCheck::Verity(on) => {
            root.insert("layer_check".into(), s("verity"));
            root.insert("on_corruption".into(), s(on.name()));
        }
        LayerCheck::Digest => {
            root.insert("layer_check".into(), s("digest"));
        }
    }
    let layers: Vec<Value> = m
        .layers
        .iter()
        .map(|l| {
            let mut t = Table::new();
            t.insert("name".into(), s(&l.name));
            t.insert("digest".into(), s(&format!("{:?}", l.digest)));
            t.insert("size".into(), int(l.size));
            t.insert("root_hash".into(), s(&l.verity.root_hash.to_string()));
            Value::Table(t)
        })
        .collect();
    let mut update = Table::new();
    update.insert("floor".into(), int(m.update.floor));
    update.insert("commit_after_ms".into(), int(m.update.commit_after_ms.into()));
    update.insert("tries".into(), int(m.update.tries.into()));
    root.insert("update".into(), Value::Table(update));
    root.insert("layer".into(), Value::Array(layers));
    root.insert("container".into(), Value::Array(m.containers.iter().map(|c| Value::Table(container(c))).collect()));
    let volumes: Vec<Value> = m
        .volumes
        .iter()
        .map(|v| {
            let mut t = Table::new();
            t.insert("name".into(), s(&v.name));
            t.insert("type".into(), s(v.kind.name()));
            t.insert("size".into(), int(v.size_bytes));
            t.insert("mode".into(), int(v.mode.into()));
            Value::Table(t)
        })
        .collect();
    root.insert("volume".into(), Value::Array(volumes));
    let networks: Vec<Value> = m
        .networks
        .iter()
        .map(|n| {
            let mut t = Table::new();
            t.insert("name".into(), s(&n.name));
            t.insert("subnet".into(), s(&n.subnet.to_string()));
            if n.egress {
                t.insert("egress".into(), Value::Boolean(true));
            }
            Value::Table(t)
        })
        .collect();
    root.insert("network".into(), Value::Array(networks));
    toml::to_string(&root).unwrap_or_else(|e| format!("# cannot print this manifest as TOML: {e}\n"))
}

/// `text` (what [`to_toml`] wrote) with a comment after each container's
/// `argv`, `env`, `cwd`, `uid`, `gid` and `groups` saying where the value
/// came from: `notes` maps a container name to (key, note). Comments keep
/// the TOML compiling to the same manifest.
pub fn annotate(text: &str, notes: &BTreeMap<String, Vec<(&'static str, String)>>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut i = 0;
    while i < lines.len() {
        // A container's own keys run from its header to the next header.
        let end = if lines[i].trim() == "[[container]]" {
            (i + 1..lines.len()).find(|j| lines[*j].starts_with('[')).unwrap_or(lines.len())
        } else {
            i + 1
        };
        let block = &lines[i..end];
        let name = block
            .iter()
            .find_map(|l| {
                l.strip_prefix("name = ").and_then(|v| toml::from_str::<toml::Value>(&format!("v = {v}")).ok())
            })
            .and_then(|v| v.get("v").and_then(|v| v.as_str()).map(str::to_owned));
        let container_notes = name.as_ref().and_then(|n| notes.get(n));
        for l in block {
            out.push_str(l);
            let key = l.split_once(" = ").map(|(k, _)| k);
            if let Some(note) = container_notes.and_then(|ns| ns.iter().find(|(k, _)| Some(*k) == key)) {
                out.push_str("  # ");
                out.push_str(&note.1);
            }
            out.push('\n');
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::appliance::{Appliance, LayerRef};

    const FULL: &str = r#"
appliance = "round-trip"
version = 7
compatible = "cairn-test"

[[layer]]
name = "base"
digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
size = 4096
root_hash = "3333333333333333333333333333333333333333333333333333333333333333"

[[layer]]
name = "app"
digest = "2222222222222222222222222222222222222222222222222222222222222222"
size = 8192
root_hash = "4444444444444444444444444444444444444444444444444444444444444444"

[[container]]
name = "db"
layers = ["base"]
argv = ["/bin/db", "--serve"]
restart = { policy = "always", backoff_initial_ms = 100, backoff_max_ms = 2000 }
stop = { signal = "SIGINT", grace_ms = 1500 }
network = "host"

[[container]]
name = "web"
layers = ["base", "app"]
argv = ["/bin/web"]
env = ["A=1", "B=two words"]
cwd = "/srv"
hostname = "front"
uid = 1000
gid = 1000
groups = [5, 20]
depends_on = ["db"]
control = true
signal_group = true
console = true
network = "container:db"
restart = { policy = "on-failure", max_restarts = 3 }
health = { interval_ms = 2000, timeout_ms = 500, retries = 4, start_period_ms = 9000 }
stop = { signal = "12", grace_ms = 100 }
limits = { memory = "32M", cpus = 0.25, pids = 16, scratch = "4M", memory_high = "24M", memory_swap = 0, cpu_weight = 50, cpuset = "0-1", io = [{ device = "vda", rbps = "1M", wiops = 100 }], rlimits = { nofile = 64, core = [0, "unlimited"] } }
security = { cap_drop = ["ALL"], cap_add = ["NET_BIND_SERVICE", "SYS_TIME"], no_new_privs = false, readonly_rootfs = true, seccomp = true, seccomp_deny = ["ptrace"], allow_userns = true, devices = [{ path = "/dev/data", source = "partition:camera-store", mode = 0o640 }] }

[[container]]
name = "jail"
layers = ["base"]
argv = ["/bin/jail"]
uid = 1000
groups = [1000]
health = { type = "command", command = ["/bin/jail", "--check", "two words"], timeout_ms = 700 }
security = { userns = { uid_map = [[0, 100000, 1], [1000, 101000, 1]], gid_map = [[0, 100000, 65536]] } }

[[container]]
name = "short"
layers = ["base"]
argv = ["/bin/short"]
limits = { memory = "max", pids = "max" }
security.userns = 200000
mounts = [{ volume = "state", path = "/var/lib/short" }, { volume = "scratch", path = "/cache", readonly = true }]
networks = ["back", { name = "front", address = "10.89.2.7" }]
publish = ["8443:443/tcp", "5353:53/udp"]

[[network]]
name = "back"
subnet = "10.89.1.0/24"

[[network]]
name = "front"
subnet = "10.89.2.0/24"
egress = true

[[volume]]
name = "state"
size = "8M"

[[volume]]
name = "scratch"
type = "tmpfs"
size = 1048576
mode = 0o1777
"#;

    fn compile(text: &str) -> Manifest {
        let app: Appliance = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut info = BTreeMap::new();
        for l in &app.layers {
            match l.reference() {
                Ok(LayerRef::Digest(id)) => {
                    info.insert(l.name.clone(), id);
                }
                other => panic!("{other:?}"),
            }
        }
        app.to_manifest(Path::new("t.toml"), &info).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn inspect_output_compiles_to_the_same_manifest() {
        let m = compile(FULL);
        let printed = to_toml(&m);
        let again = compile(&printed);
        assert_eq!(m, again, "printed:\n{printed}");
        // Printing is stable.
        assert_eq!(printed, to_toml(&again));
        assert!(printed.contains("digest = \"sha256:1111"), "{printed}");
        assert!(printed.contains("compatible = \"cairn-test\""), "{printed}");
        assert!(
            m.networks[1].egress && m.containers.iter().any(|c| c.publish.len() == 2),
            "the fixture has egress and publish"
        );
        assert!(printed.contains("layer_check = \"verity\""), "{printed}");
        assert!(printed.contains("on_corruption = \"eio\""), "{printed}");
        assert!(printed.contains("root_hash = \"4444"), "{printed}");
        assert!(printed.contains("memory = \"max\""), "{printed}");
        assert_eq!(m.containers[0].limits.pids_max, Some(1024), "the default is written into the manifest");
        assert!(printed.contains("network = \"container:db\""), "{printed}");
        assert!(printed.contains("uid_map = [[0, 100000, 1], [1000, 101000, 1]]"), "{printed}");
        assert_eq!(m.volumes.len(), 2);
        assert!(printed.contains("type = \"tmpfs\""), "{printed}");
        assert!(printed.contains("readonly = true"), "{printed}");
        assert!(printed.contains("address = \"10.89.1.2\""), "{printed}");
        assert!(printed.contains("subnet = \"10.89.2.0/24\""), "{printed}");
        assert!(
            m.containers[0].security.userns.is_none()
                && !printed.contains("[[0, 200000, 65536]], gid_map = [[0, 100000")
        );
    }

    #[test]
    fn origin_comments_keep_the_toml_the_same() {
        let text = to_toml(&compile(FULL));
        let mut notes = BTreeMap::new();
        notes.insert(
            "web".to_owned(),
            vec![("argv", "image config (layer app)".to_owned()), ("uid", "appliance file".to_owned())],
        );
        let annotated = annotate(&text, &notes);
        assert!(annotated.contains("argv = [\"/bin/web\"]  # image config (layer app)\n"), "{annotated}");
        assert!(annotated.contains("uid = 1000  # appliance file\n"), "{annotated}");
        // db's argv is not annotated; the comments change nothing.
        assert!(annotated.contains("argv = [\"/bin/db\", \"--serve\"]\n"), "{annotated}");
        let a: toml::Value = toml::from_str(&annotated).unwrap_or_else(|e| panic!("{e}"));
        let b: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
    }
}
