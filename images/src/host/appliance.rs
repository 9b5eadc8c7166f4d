//! The human-written appliance description (TOML) and its compilation into
//! a [`Manifest`]. See `docs/appliance.md` for the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{
    self, Container, CpuMax, Layer, Limits, Manifest, Restart, RestartPolicy, Stop,
};

/// The appliance file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Appliance name.
    pub appliance: String,
    /// Manifest version (anti-rollback counter).
    pub version: u64,
    /// Layers, by name.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerSource>,
    /// Containers.
    #[serde(default, rename = "container")]
    pub containers: Vec<ContainerSpec>,
}

/// Where a layer's files come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSource {
    /// Name containers use.
    pub name: String,
    /// A directory relative to the appliance file, or `build:NAME` for a
    /// directory the build tool produces (see the build tool's docs).
    pub source: String,
}

/// One container as written by a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Unique name.
    pub name: String,
    /// Layers, lowest first.
    pub layers: Vec<String>,
    /// Entrypoint and arguments.
    pub argv: Vec<String>,
    /// Environment.
    #[serde(default = "default_env")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Hostname (default: the container name).
    pub hostname: Option<String>,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Started after these.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// May use the control socket.
    #[serde(default)]
    pub control: bool,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Stop behaviour.
    #[serde(default)]
    pub stop: StopSpec,
}

fn default_env() -> Vec<String> {
    vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()]
}
fn default_cwd() -> String {
    "/".into()
}

/// Limits as written: sizes accept `K`, `M`, `G` suffixes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// `memory.max`, e.g. "64M".
    pub memory: Option<Size>,
    /// CPUs as a fraction, e.g. 0.5 = 50 ms per 100 ms.
    pub cpus: Option<f64>,
    /// `pids.max`.
    pub pids: Option<u32>,
    /// Size cap of the writable scratch layer (default 16M).
    pub scratch: Option<Size>,
}

/// A byte size: an integer or a string with a K/M/G suffix.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Plain bytes.
    Bytes(u64),
    /// "64M" and the like.
    Text(SizeText),
}

/// A size string, parsed when used.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct SizeText(u64);

impl TryFrom<String> for SizeText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_size(&s).map(SizeText).ok_or_else(|| {
            format!("{s:?} is not a size (use e.g. 65536, \"64K\", \"32M\", \"1G\")")
        })
    }
}

/// Parse "123", "64K", "32M", "1G" (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (s.get(..i)?, 1u64 << 10),
        (i, 'M' | 'm') => (s.get(..i)?, 1 << 20),
        (i, 'G' | 'g') => (s.get(..i)?, 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Size {
    fn bytes(self) -> u64 {
        match self {
            Size::Bytes(b) => b,
            Size::Text(SizeText(b)) => b,
        }
    }
}

/// Restart policy as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// "never", "on-failure" or "always".
    #[serde(default = "default_policy")]
    pub policy: String,
    /// With on-failure: restarts allowed.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// First delay.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u32,
    /// Largest delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u32,
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            max_restarts: default_max_restarts(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
        }
    }
}
fn default_policy() -> String {
    "on-failure".into()
}
fn default_max_restarts() -> u32 {
    5
}
fn default_backoff_initial() -> u32 {
    500
}
fn default_backoff_max() -> u32 {
    30_000
}

/// Stop behaviour as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// Signal name ("SIGTERM", "TERM") or number.
    #[serde(default = "default_signal")]
    pub signal: String,
    /// Grace period before the cgroup is killed.
    #[serde(default = "default_grace")]
    pub grace_ms: u32,
}

impl Default for StopSpec {
    fn default() -> Self {
        Self {
            signal: default_signal(),
            grace_ms: default_grace(),
        }
    }
}
fn default_signal() -> String {
    "SIGTERM".into()
}
fn default_grace() -> u32 {
    5000
}

/// Signal numbers by name (the ones that are the same on every Linux
/// architecture cairn supports).
pub fn signal_number(s: &str) -> Option<u8> {
    let name = s.trim().trim_start_matches("SIG");
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "ALRM" => 14,
        "TERM" => 15,
        "PWR" => 30,
        other => return other.parse().ok(),
    };
    Some(n)
}

/// Why an appliance file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// Reading the file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field, a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Problems found while compiling it, one per line.
    #[error("{path}: {}", .problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, with its place.
        problems: Vec<String>,
    },
}

impl Appliance {
    /// Read and parse an appliance file.
    pub fn load(path: &Path) -> Result<Self, ApplianceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ApplianceError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ApplianceError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Compile into a manifest. `layer_info` gives the digest and size of
    /// each layer by name (the caller built them). Every problem is collected.
    pub fn to_manifest(
        &self,
        path: &Path,
        layer_info: &BTreeMap<String, (Digest, u64)>,
    ) -> Result<Manifest, ApplianceError> {
        let mut problems = Vec::new();
        fn fit(problems: &mut Vec<String>, place: String, what: &str, ok: bool) {
            if !ok {
                problems.push(format!(
                    "{place}: {what} exceeds a fixed capacity (see docs/appliance.md)"
                ));
            }
        }
        let mut m = Manifest {
            appliance: heapless::String::new(),
            version: self.version,
            layers: heapless::Vec::new(),
            containers: heapless::Vec::new(),
        };
        fit(
            &mut problems,
            "appliance".into(),
            "name",
            m.appliance.push_str(&self.appliance).is_ok(),
        );
        for (i, l) in self.layers.iter().enumerate() {
            let place = format!("layer[{i}] ({})", l.name);
            let Some((digest, size)) = layer_info.get(&l.name) else {
                problems.push(format!("{place}: layer was not built"));
                continue;
            };
            let mut name = heapless::String::new();
            fit(
                &mut problems,
                place.clone(),
                "name",
                name.push_str(&l.name).is_ok(),
            );
            fit(
                &mut problems,
                place,
                "layer list",
                m.layers
                    .push(Layer {
                        name,
                        digest: *digest,
                        size: *size,
                    })
                    .is_ok(),
            );
        }
        for (i, c) in self.containers.iter().enumerate() {
            let place = format!("container[{i}] ({})", c.name);
            match compile_container(c) {
                Ok(mc) => fit(
                    &mut problems,
                    place,
                    "container list",
                    m.containers.push(mc).is_ok(),
                ),
                Err(p) => problems.extend(p.into_iter().map(|p| format!("{place}: {p}"))),
            }
        }
        m.for_each_problem(|e| problems.push(e.to_string()));
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(ApplianceError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

fn copy_str<const N: usize>(
    s: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> heapless::String<N> {
    let mut out = heapless::String::new();
    if out.push_str(s).is_err() {
        problems.push(format!("{what} {s:?} is longer than {N} bytes"));
    }
    out
}

fn copy_list<const L: usize, const N: usize>(
    items: &[String],
    what: &str,
    problems: &mut Vec<String>,
) -> heapless::Vec<heapless::String<N>, L> {
    let mut out = heapless::Vec::new();
    for s in items {
        let v = copy_str::<N>(s, what, problems);
        if out.push(v).is_err() {
            problems.push(format!("more than {L} {what} entries"));
            break;
        }
    }
    out
}

fn compile_container(c: &ContainerSpec) -> Result<Container, Vec<String>> {
    let mut p = Vec::new();
    let policy = match c.restart.policy.as_str() {
        "never" => RestartPolicy::Never,
        "always" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure {
            max_restarts: c.restart.max_restarts,
        },
        other => {
            p.push(format!(
                "restart policy {other:?} is not never, on-failure or always"
            ));
            RestartPolicy::Never
        }
    };
    let signal = signal_number(&c.stop.signal).unwrap_or_else(|| {
        p.push(format!("stop signal {:?} is unknown", c.stop.signal));
        0
    });
    let cpu_max = match c.limits.cpus {
        None => None,
        Some(f) if f.is_finite() && f > 0.0 && f <= 1024.0 => Some(CpuMax {
            quota_us: (f * 100_000.0).round() as u32,
            period_us: 100_000,
        }),
        Some(f) => {
            p.push(format!("limits.cpus {f} must be a number of CPUs above 0"));
            None
        }
    };
    let out = Container {
        name: copy_str(&c.name, "name", &mut p),
        layers: copy_list(&c.layers, "layers", &mut p),
        argv: copy_list(&c.argv, "argv", &mut p),
        env: copy_list(&c.env, "env", &mut p),
        cwd: copy_str(&c.cwd, "cwd", &mut p),
        hostname: copy_str(c.hostname.as_deref().unwrap_or(&c.name), "hostname", &mut p),
        uid: c.uid,
        gid: c.gid,
        limits: Limits {
            memory_max: c.limits.memory.map(Size::bytes),
            cpu_max,
            pids_max: c.limits.pids,
            scratch_bytes: c.limits.scratch.map(Size::bytes).unwrap_or(16 << 20),
        },
        restart: Restart {
            policy,
            backoff_initial_ms: c.restart.backoff_initial_ms,
            backoff_max_ms: c.restart.backoff_max_ms,
        },
        depends_on: copy_list::<{ manifest::MAX_DEPS }, { manifest::NAME_LEN }>(
            &c.depends_on,
            "depends_on",
            &mut p,
        ),
        stop: Stop {
            signal,
            grace_ms: c.stop.grace_ms,
        },
        control: c.control,
    };
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
appliance = "demo"
version = 3

[[layer]]
name = "base"
source = "base"

[[container]]
name = "sensor"
layers = ["base"]
argv = ["/bin/sensor", "--fast"]
limits = { memory = "32M", cpus = 0.25, pids = 16 }
restart = { policy = "on-failure", max_restarts = 2 }
stop = { signal = "SIGINT", grace_ms = 1000 }

[[container]]
name = "web"
layers = ["base"]
argv = ["/bin/web"]
depends_on = ["sensor"]
"#;

    fn info() -> BTreeMap<String, (Digest, u64)> {
        BTreeMap::from([("base".to_owned(), (Digest([1; 32]), 4096))])
    }

    #[test]
    fn compiles_with_defaults_and_units() {
        let a: Appliance = toml::from_str(GOOD).unwrap_or_else(|e| panic!("{e}"));
        let m = a
            .to_manifest(Path::new("a.toml"), &info())
            .unwrap_or_else(|e| panic!("{e}"));
        let s = &m.containers[0];
        assert_eq!(s.limits.memory_max, Some(32 << 20));
        assert_eq!(
            s.limits.cpu_max,
            Some(CpuMax {
                quota_us: 25_000,
                period_us: 100_000
            })
        );
        assert_eq!(s.stop.signal, 2);
        assert_eq!(s.hostname.as_str(), "sensor");
        assert_eq!(
            s.restart.policy,
            RestartPolicy::OnFailure { max_restarts: 2 }
        );
        assert_eq!(m.containers[1].limits.scratch_bytes, 16 << 20);
        assert_eq!(m.layers[0].size, 4096);
    }

    #[test]
    fn unknown_fields_are_refused_with_a_place() {
        let bad = GOOD.replace("pids = 16", "pids = 16, swap = 1");
        let e = toml::from_str::<Appliance>(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("swap"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = GOOD
            .replace("policy = \"on-failure\"", "policy = \"sometimes\"")
            .replace("depends_on = [\"sensor\"]", "depends_on = [\"ghost\"]")
            .replace(
                "layers = [\"base\"]\nargv = [\"/bin/web\"]",
                "layers = [\"nope\"]\nargv = [\"/bin/web\"]",
            );
        let a: Appliance = toml::from_str(&bad).unwrap_or_else(|e| panic!("{e}"));
        let Err(ApplianceError::Invalid { problems, .. }) =
            a.to_manifest(Path::new("a.toml"), &info())
        else {
            panic!("accepted")
        };
        let all = problems.join("\n");
        assert!(all.contains("sometimes"), "{all}");
        assert!(all.contains("ghost"), "{all}");
        assert!(all.contains("nope"), "{all}");
    }

    #[test]
    fn sizes_and_signals_parse() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999G"), None);
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("12"), Some(12));
        assert_eq!(signal_number("SIGFOO"), None);
    }
}
