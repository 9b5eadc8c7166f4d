//! `cairn manifest`: compile, print and check signed manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::{assemble, keys, manifest_toml};
use cairn_format::envelope::{self, Envelope};
use cairn_format::Manifest;
use clap::Subcommand;

use crate::progress::{size, Progress};

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Compile an appliance file (TOML) into a signed manifest envelope.
    ///
    /// Layers given by `source` are built into --layers DIR (default: a
    /// `layers` directory beside --out) as NAME.squashfs; layers given by
    /// `file` are hashed; layers given by `digest` are taken as they are.
    /// Everything the device would refuse (an unknown layer, a dependency
    /// cycle, a limit out of range, a list or string over its bound) is
    /// reported, every problem with its place, and nothing is written.
    Build {
        /// The appliance file.
        appliance: PathBuf,
        /// Secret signing key (mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// The signed manifest to write.
        #[arg(long)]
        out: PathBuf,
        /// Where layers built from sources go.
        #[arg(long)]
        layers: Option<PathBuf>,
    },
    /// Print a manifest envelope as appliance TOML (the signature is not
    /// checked; see `verify`). The output compiles back to the same manifest.
    Inspect {
        /// The manifest envelope.
        manifest: PathBuf,
    },
    /// Check a manifest's signature against public keys, decode it and
    /// validate it as a device would. Exits non-zero if anything fails.
    Verify {
        /// The manifest envelope.
        manifest: PathBuf,
        /// A trusted public key file (KEY.pub, or a secret key); repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
    },
}

pub fn run(cmd: ManifestCommand, progress: &Progress) -> Result<()> {
    match cmd {
        ManifestCommand::Build { appliance, key, out, layers } => build(&appliance, &key, &out, layers, progress),
        ManifestCommand::Inspect { manifest } => inspect(&manifest),
        ManifestCommand::Verify { manifest, pubkeys } => verify(&manifest, &pubkeys),
    }
}

fn build(appliance: &Path, key: &Path, out: &Path, layers: Option<PathBuf>, progress: &Progress) -> Result<()> {
    let key = keys::load(key)?;
    let layers_dir = layers.unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("layers"));
    progress.step(format!("building layers of {}", appliance.display()));
    let app = assemble::build_appliance(appliance, &BTreeMap::new(), &key, &layers_dir)?;
    write_atomically(out, &app.envelope)?;
    progress.clear();
    let m = &app.manifest;
    println!(
        "manifest {} ({} bytes) for {} version {}, compatible {}",
        out.display(),
        app.envelope.len(),
        m.appliance,
        m.version,
        m.compatible
    );
    println!("signed by key {}", keys::id_of(&key));
    for l in &app.layers {
        let file = l.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(no image file here)".into());
        println!(
            "  layer {:<16} {:?}  {:>10}  verity root {}  {file}",
            l.name,
            l.digest,
            size(l.size),
            l.verity.root_hash
        );
    }
    for c in &m.containers {
        println!(
            "  container {:<12} layers {}",
            c.name,
            c.layers.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(",")
        );
    }
    eprintln!("cairn: done in {:.1} s", progress.elapsed().as_secs_f64());
    Ok(())
}

/// Write `bytes` to `out` through a temporary file in the same directory,
/// so `out` is either the old file or the complete new one.
pub fn write_atomically(out: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, out));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", out.display()))
}

/// The envelope's key id and decoded, validated manifest, without checking
/// the signature.
pub fn read_unverified(path: &Path) -> Result<(envelope::KeyId, Manifest)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let env = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let m = decode(path, env.payload)?;
    Ok((env.key_id, m))
}

fn decode(path: &Path, payload: &[u8]) -> Result<Manifest> {
    let (m, rest): (Manifest, _) = postcard::take_from_bytes(payload).map_err(|e| {
        anyhow::anyhow!("{}: the payload is not a manifest this cairn understands: {e}", path.display())
    })?;
    if !rest.is_empty() {
        bail!("{}: {} bytes after the manifest in the signed payload", path.display(), rest.len());
    }
    m.validate().map_err(|e| anyhow::anyhow!("{}: manifest invalid: {e}", path.display()))?;
    Ok(m)
}

fn inspect(path: &Path) -> Result<()> {
    let (key_id, m) = read_unverified(path)?;
    println!("# {}: signed by key {key_id} (signature not checked; use `cairn manifest verify`)", path.display());
    print!("{}", manifest_toml::to_toml(&m));
    Ok(())
}

fn verify(path: &Path, pubkeys: &[PathBuf]) -> Result<()> {
    let mut trusted = Vec::new();
    for p in pubkeys {
        let k = if p.extension().is_some_and(|e| e == "pub") {
            keys::load_public(p)?
        } else {
            keys::load(p)?.verifying_key().to_bytes()
        };
        trusted.push(k);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let env = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let payload = env.verify(&trusted).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let m = decode(path, payload)?;
    println!(
        "{}: good signature by key {}; {} version {} for {}, {} layers, {} containers",
        path.display(),
        env.key_id,
        m.appliance,
        m.version,
        m.compatible,
        m.layers.len(),
        m.containers.len()
    );
    Ok(())
}
