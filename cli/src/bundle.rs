//! `cairn bundle`: build, print and check update bundles.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::bundle::{self as build_bundle, BundleInput};
use cairn_build::{assemble, keys};
use cairn_format::bundle::{PartName, Toc};
use cairn_format::envelope::{self, Envelope, KeyId};
use cairn_format::Manifest;
use clap::Subcommand;
use serde_json::json;

use crate::manifest::{read_unverified, Signer, SignerArgs};
use crate::output::{digest, Output};
use crate::progress::{size, Progress};

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write an update bundle: a signed table of contents, the signed
    /// manifest, and the layer partitions a device needs.
    ///
    /// Every part starts on a 4 KiB boundary and a layer part holds exactly
    /// the bytes of a cairn-layer-NN partition (image, padding, dm-verity
    /// tree). With --base, a thin bundle: only the layers whose digest the
    /// base manifest does not name. The same inputs give the same bytes.
    Build {
        /// The signed manifest (`cairn manifest build`).
        #[arg(long)]
        manifest: PathBuf,
        /// Directory holding the layer images the bundle carries.
        #[arg(long)]
        layers: PathBuf,
        /// Who signs the table of contents (devices must trust the key):
        /// --key, or --sign-command with --pubkey, as `manifest sign`.
        #[command(flatten)]
        signer: SignerArgs,
        /// The manifest devices update from (a built manifest envelope):
        /// leave out every layer it names.
        #[arg(long, value_name = "OLD.manifest")]
        base: Option<PathBuf>,
        /// A boot slot image (PE/UKI) to carry.
        #[arg(long, value_name = "FILE")]
        boot_image: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
        /// Also write the parts as content-addressed files for a static
        /// HTTP server: DIR/toc and DIR/blobs/sha256/<hex>.
        #[arg(long, value_name = "DIR")]
        split: Option<PathBuf>,
    },
    /// Print a bundle's table of contents: version, product, parts, sizes,
    /// digests, and the layers a thin bundle leaves out (signatures and
    /// part digests are not checked; see `verify`).
    Inspect {
        /// The bundle file, or a directory `--split` wrote.
        bundle: PathBuf,
    },
    /// Check a bundle as a device would, and every part: the table of
    /// contents' signature and bounds, the manifest's signature, that they
    /// agree, each part's sha256 and each layer image's digest. Exits
    /// non-zero on the first problem.
    Verify {
        /// The bundle file, or a directory `--split` wrote.
        bundle: PathBuf,
        /// A trusted public key file (KEY.pub, a public key PEM, or a secret
        /// key); repeat for several.
        #[arg(long = "pubkey", visible_alias = "trust", required = true)]
        pubkeys: Vec<PathBuf>,
    },
}

pub fn run(cmd: BundleCommand, progress: &Progress, out: &Output) -> Result<()> {
    match cmd {
        BundleCommand::Build { manifest, layers, signer, base, boot_image, out: path, split } => {
            let signer = Signer::from_args(signer)?
                .context("say who signs the table of contents: --key KEY, or --sign-command CMD --pubkey KEY.pub")?;
            let paths = BuildPaths {
                manifest: &manifest,
                layers: &layers,
                base: base.as_deref(),
                boot_image: boot_image.as_deref(),
                out: &path,
                split: split.as_deref(),
            };
            build(&paths, &signer, progress, out)
        }
        BundleCommand::Inspect { bundle } => inspect(&bundle, out),
        BundleCommand::Verify { bundle, pubkeys } => verify(&bundle, &pubkeys, progress, out),
    }
}

/// The files `bundle build` reads and writes.
#[derive(Clone, Copy)]
struct BuildPaths<'a> {
    manifest: &'a Path,
    layers: &'a Path,
    base: Option<&'a Path>,
    boot_image: Option<&'a Path>,
    out: &'a Path,
    split: Option<&'a Path>,
}

fn build(paths: &BuildPaths<'_>, signer: &Signer, progress: &Progress, out: &Output) -> Result<()> {
    let BuildPaths { manifest, layers, base, boot_image, out: path, split } = *paths;
    let envelope = std::fs::read(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let (_, m) = read_unverified(manifest)?;
    if keys::is_unsigned(&envelope) {
        bail!(
            "{}: not signed; a device refuses an unsigned manifest (sign it with `cairn manifest sign`)",
            manifest.display()
        );
    }
    let base_m = base.map(|b| read_unverified(b).map(|(_, m)| m)).transpose()?;
    // Only the layers the bundle carries need images here.
    let mut wanted = m.clone();
    if let Some(b) = &base_m {
        build_bundle::check_base(&m, b)?;
        wanted.layers.retain(|l| !b.layers.iter().any(|bl| bl.digest == l.digest));
    }
    progress.step(format!("finding layers in {}", layers.display()));
    let found = assemble::find_layers(&wanted, layers)?;
    progress.step(format!("writing {}", path.display()));
    let input = BundleInput { envelope: &envelope, manifest: &m, layers: &found, base: base_m.as_ref(), boot_image };
    let public = signer.public();
    let mut sign = |bytes: &[u8]| signer.sign(bytes).map_err(|e| format!("{e:#}"));
    let built = build_bundle::write_bundle_with(&input, &public, &mut sign, path)?;
    let files = match split {
        Some(dir) => {
            progress.step(format!("writing the parts into {}", dir.display()));
            Some(build_bundle::write_split(path, &built.toc, &built.toc_bytes, dir)?)
        }
        None => None,
    };
    progress.clear();
    let key_id = envelope::key_id(&public);
    let d = Described { path, toc: &built.toc, toc_len: built.toc_len, key_id, manifest: Some(&m) };
    if out.json {
        let mut v = d.json();
        v["split"] = match (split, &files) {
            (Some(dir), Some(files)) => json!({ "dir": dir, "files": files.len() }),
            _ => serde_json::Value::Null,
        };
        return out.print_json(&v);
    }
    d.print();
    if let (Some(dir), Some(files)) = (split, &files) {
        println!("split into {}: {} files (toc, blobs/sha256/<hex>)", dir.display(), files.len());
    }
    eprintln!("cairn: done in {:.1} s", progress.elapsed().as_secs_f64());
    Ok(())
}

/// A bundle to print.
struct Described<'a> {
    path: &'a Path,
    toc: &'a Toc,
    toc_len: usize,
    key_id: KeyId,
    manifest: Option<&'a Manifest>,
}

impl Described<'_> {
    fn layer_name(&self, d: &cairn_format::Digest) -> Option<String> {
        self.manifest?.layers.iter().find(|l| l.digest == *d).map(|l| l.name.to_string())
    }

    /// The manifest layers the bundle leaves out.
    fn omitted(&self) -> Vec<&cairn_format::manifest::Layer> {
        self.manifest.map_or(Vec::new(), |m| m.layers.iter().filter(|l| self.toc.layer(&l.digest).is_none()).collect())
    }

    fn json(&self) -> serde_json::Value {
        let t = self.toc;
        let parts: Vec<_> = t
            .parts()
            .map(|(name, p)| {
                let mut v = json!({
                    "part": name.to_string(),
                    "offset": p.offset,
                    "size": p.size,
                    "sha256": digest(&p.sha256),
                });
                if let PartName::Layer(i) = name {
                    if let Some(l) = t.layers.get(i) {
                        v["layer"] = json!(self.layer_name(&l.digest));
                        v["digest"] = json!(digest(&l.digest));
                    }
                }
                v
            })
            .collect();
        json!({
            "bundle": self.path,
            "size": t.total_size,
            "compatible": t.compatible,
            "version": t.version,
            "base_version": t.base_version,
            "key_id": self.key_id.to_string(),
            "toc_size": self.toc_len,
            "appliance": self.manifest.map(|m| m.appliance.as_str()),
            "parts": parts,
            "omitted": self.omitted().iter().map(|l| json!({
                "layer": l.name.as_str(),
                "digest": digest(&l.digest),
                "size": l.size,
            })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        let t = self.toc;
        let kind = match t.base_version {
            Some(b) => format!("thin, from version {b}"),
            None => "full".to_owned(),
        };
        println!(
            "bundle {} ({}) for {} version {} ({kind})",
            self.path.display(),
            size(t.total_size),
            t.compatible,
            t.version
        );
        println!("  table of contents {} bytes, signed by key {}", self.toc_len, self.key_id);
        for (name, p) in t.parts() {
            let label = match name {
                PartName::Layer(i) => t
                    .layers
                    .get(i)
                    .map(|l| format!("layer {}", self.layer_name(&l.digest).unwrap_or_else(|| "?".into())))
                    .unwrap_or_default(),
                other => other.to_string(),
            };
            println!("  {label:<22} at {:>10} {:>10}  {}", p.offset, size(p.size), digest(&p.sha256));
        }
        for l in self.omitted() {
            println!("  omitted layer {:<14} {} {} (the device must hold it)", l.name, digest(&l.digest), size(l.size));
        }
    }
}

fn inspect(path: &Path, out: &Output) -> Result<()> {
    let b = build_bundle::read_bundle(path)?;
    // The manifest's signature is not checked here either.
    let manifest = Envelope::parse(&b.envelope)
        .ok()
        .and_then(|env| postcard::take_from_bytes::<Manifest>(env.payload).ok())
        .map(|(m, _)| m);
    let d = Described { path, toc: &b.toc, toc_len: b.toc_len, key_id: b.key_id, manifest: manifest.as_ref() };
    if out.json {
        let mut v = d.json();
        v["signature_checked"] = json!(false);
        return out.print_json(&v);
    }
    println!("# {}: signatures and part digests not checked; use `cairn bundle verify`", path.display());
    d.print();
    if manifest.is_none() {
        println!("  manifest part does not decode: layer names unknown");
    }
    Ok(())
}

fn verify(path: &Path, pubkeys: &[PathBuf], progress: &Progress, out: &Output) -> Result<()> {
    let mut trusted = Vec::new();
    for p in pubkeys {
        trusted.push(keys::load_any_public(p)?);
    }
    progress.step(format!("checking {}", path.display()));
    let v = build_bundle::verify_bundle(path, &trusted)?;
    progress.clear();
    let d = Described { path, toc: &v.toc, toc_len: v.toc_len, key_id: v.key_id, manifest: Some(&v.manifest) };
    if out.json {
        let mut j = d.json();
        j["good_signature"] = json!(true);
        j["manifest_key_id"] = json!(v.manifest_key_id.to_string());
        return out.print_json(&j);
    }
    let omitted = if v.omitted.is_empty() {
        String::new()
    } else {
        format!(", {} layers left out (the device must hold them)", v.omitted.len())
    };
    println!(
        "{}: good; table of contents signed by key {}, manifest by key {}; {} version {} for {}, {} parts checked{omitted}",
        path.display(),
        v.key_id,
        v.manifest_key_id,
        v.manifest.appliance,
        v.manifest.version,
        v.manifest.compatible,
        v.toc.parts().count(),
    );
    Ok(())
}
