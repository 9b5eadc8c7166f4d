//! `cairn manifest`: compile, print and check signed manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::{assemble, keys, manifest_toml};
use cairn_format::envelope::{self, Envelope};
use cairn_format::Manifest;
use clap::Subcommand;
use serde_json::json;

use crate::output::{digest, Output};
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
    ///
    /// Signed with --key, or by --sign-command; with --unsigned the
    /// envelope is written without a signature, for `cairn manifest sign`
    /// on another machine (the release key need never be on the build
    /// machine).
    Build {
        /// The appliance file.
        appliance: PathBuf,
        #[command(flatten)]
        signer: SignerArgs,
        /// Write an unsigned envelope (key id and signature zero), to be
        /// signed by `cairn manifest sign`.
        #[arg(long, conflicts_with_all = ["key", "sign_command"])]
        unsigned: bool,
        /// The manifest envelope to write.
        #[arg(long)]
        out: PathBuf,
        /// Where layers built from sources go.
        #[arg(long)]
        layers: Option<PathBuf>,
        /// Take a multi-platform source image's platform from this board's
        /// architecture (see `cairn boards`).
        #[arg(long)]
        board: Option<String>,
    },
    /// Sign a manifest envelope (one `manifest build --unsigned` wrote, or
    /// re-sign a signed one) with a key file or a signing command.
    ///
    /// The payload is decoded and validated first. The signature covers
    /// the envelope's header and payload, exactly as `manifest build --key`
    /// signs: the output is byte for byte the same. A signature from
    /// --sign-command is checked against --pubkey before anything is
    /// written.
    Sign {
        /// The manifest envelope to sign.
        manifest: PathBuf,
        #[command(flatten)]
        signer: SignerArgs,
        /// The signed envelope to write (may be the input).
        #[arg(long)]
        out: PathBuf,
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
        /// A trusted public key file (KEY.pub, a public key PEM, or a secret
        /// key); repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
    },
}

/// Who signs: a key file, or a command (an HSM's or a KMS's client).
#[derive(Debug, clap::Args)]
pub(crate) struct SignerArgs {
    /// Secret signing key: PKCS#8 PEM ed25519, or 64 hex characters (mode 0600).
    #[arg(long, conflicts_with = "sign_command")]
    key: Option<PathBuf>,
    /// Shell command that signs: it reads the bytes to sign on stdin (also
    /// in the file $CAIRN_SIGN_FILE) and prints the ed25519 signature on
    /// stdout (64 raw bytes, hex or base64). Needs --pubkey.
    #[arg(long, requires = "pubkey", value_name = "CMD")]
    sign_command: Option<String>,
    /// The public key of --sign-command's key (hex `.pub` or PEM): names
    /// the key in the envelope, and checks the signature.
    #[arg(long, requires = "sign_command")]
    pubkey: Option<PathBuf>,
}

/// A signer, ready.
pub(crate) enum Signer {
    Key(ed25519_dalek::SigningKey),
    Command { command: String, public: envelope::PublicKey, pubkey: PathBuf },
}

impl Signer {
    pub(crate) fn from_args(a: SignerArgs) -> Result<Option<Signer>> {
        Ok(match (a.key, a.sign_command, a.pubkey) {
            (Some(k), _, _) => Some(Signer::Key(keys::load(&k)?)),
            (None, Some(command), Some(pubkey)) => {
                Some(Signer::Command { command, public: keys::load_public(&pubkey)?, pubkey })
            }
            _ => None,
        })
    }

    pub(crate) fn public(&self) -> envelope::PublicKey {
        match self {
            Signer::Key(k) => k.verifying_key().to_bytes(),
            Signer::Command { public, .. } => *public,
        }
    }

    /// The signed envelope of `payload`.
    fn seal(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let to_sign = keys::signed_bytes(payload, &self.public())?;
        let signature = self.sign(&to_sign)?;
        Ok(keys::attach(&to_sign, &signature, &self.public())?)
    }

    /// The ed25519 signature of `bytes` (not checked here).
    pub(crate) fn sign(&self, bytes: &[u8]) -> Result<[u8; 64]> {
        Ok(match self {
            Signer::Key(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(bytes).to_bytes()
            }
            Signer::Command { command, public, pubkey } => run_sign_command(command, bytes, public, pubkey)?,
        })
    }
}

/// Run `sh -c command` with `bytes` on stdin and in $CAIRN_SIGN_FILE; its
/// stdout, parsed as a signature. Its stderr goes to ours (prompts, errors).
fn run_sign_command(command: &str, bytes: &[u8], public: &envelope::PublicKey, pubkey: &Path) -> Result<[u8; 64]> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut file = tempfile::NamedTempFile::new().context("cannot make a temporary file for --sign-command")?;
    file.write_all(bytes).and_then(|()| file.flush()).context("cannot write the bytes to sign")?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("CAIRN_SIGN_FILE", file.path())
        .env("CAIRN_KEY_ID", envelope::key_id(public).to_string())
        .env("CAIRN_PUBKEY", pubkey)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run --sign-command {command:?}"))?;
    let stdin = child.stdin.take();
    let data = bytes.to_vec();
    // A command may read the file and never stdin: a closed pipe is fine.
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&data);
        }
    });
    let out = child.wait_with_output().with_context(|| format!("waiting for --sign-command {command:?}"))?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("--sign-command {command:?} failed ({}); nothing written", out.status);
    }
    keys::parse_signature(&out.stdout).with_context(|| format!("--sign-command {command:?}"))
}

pub fn run(cmd: ManifestCommand, progress: &Progress, out: &Output) -> Result<()> {
    match cmd {
        ManifestCommand::Build { appliance, signer, unsigned, out: path, layers, board } => {
            let signer = Signer::from_args(signer)?;
            if signer.is_none() && !unsigned {
                bail!("say how to sign: --key KEY, --sign-command CMD --pubkey KEY.pub, or --unsigned");
            }
            let platform = board.as_deref().map(crate::layer::board_platform).transpose()?;
            build(&appliance, signer.as_ref(), &path, layers, platform, progress, out)
        }
        ManifestCommand::Sign { manifest, signer, out: path } => {
            let signer = Signer::from_args(signer)?
                .context("say how to sign: --key KEY, or --sign-command CMD --pubkey KEY.pub")?;
            sign(&manifest, &signer, &path, out)
        }
        ManifestCommand::Inspect { manifest } if out.json => inspect_json(&manifest, out),
        ManifestCommand::Inspect { manifest } => inspect(&manifest),
        ManifestCommand::Verify { manifest, pubkeys } => verify(&manifest, &pubkeys, out),
    }
}

fn build(
    appliance: &Path,
    signer: Option<&Signer>,
    path: &Path,
    layers: Option<PathBuf>,
    platform: Option<&str>,
    progress: &Progress,
    out: &Output,
) -> Result<()> {
    let layers_dir = layers.unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("layers"));
    progress.step(format!("building layers of {}", appliance.display()));
    // The library signs as it builds: give it a throw-away key and seal the
    // payload again as asked (the payload does not depend on the key).
    let scratch = keys::generate()?;
    let app = assemble::build_appliance_for(appliance, &BTreeMap::new(), &scratch, &layers_dir, platform)?;
    let payload = Envelope::parse(&app.envelope).map_err(|e| anyhow::anyhow!("{e}"))?.payload;
    let (envelope, key_id) = match signer {
        Some(s) => {
            progress.step("signing");
            (s.seal(payload)?, Some(envelope::key_id(&s.public())))
        }
        None => (keys::unsigned_envelope(payload)?, None),
    };
    write_atomically(path, &envelope)?;
    let record = crate::provenance::path_for(path);
    let statement = crate::provenance::statement(appliance, &app, payload)?;
    write_atomically(&record, &serde_json::to_vec_pretty(&statement)?)?;
    progress.clear();
    let m = &app.manifest;
    if out.json {
        return out.print_json(&json!({
            "manifest": path,
            "provenance": record,
            "size": envelope.len(),
            "signed": key_id.is_some(),
            "key_id": key_id.map(|k| k.to_string()),
            "appliance": m.appliance.as_str(),
            "version": m.version,
            "compatible": m.compatible.as_str(),
            "layers": app.layers.iter().map(|l| json!({
                "name": l.name,
                "digest": digest(&l.digest),
                "size": l.size,
                "path": l.path,
                "verity_root_hash": l.verity.root_hash.to_string(),
            })).collect::<Vec<_>>(),
            "containers": m.containers.iter().map(|c| json!({
                "name": c.name.as_str(),
                "layers": c.layers.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
    }
    println!(
        "manifest {} ({} bytes) for {} version {}, compatible {}",
        path.display(),
        envelope.len(),
        m.appliance,
        m.version,
        m.compatible
    );
    println!("provenance {} (in-toto statement, SLSA provenance v1)", record.display());
    match key_id {
        Some(id) => println!("signed by key {id}"),
        None => println!("unsigned: sign it with `cairn manifest sign {} --key KEY --out FILE`", path.display()),
    }
    for l in &app.layers {
        let file = l.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(no image file here)".into());
        println!(
            "  layer {:<16} {}  {:>10}  verity root {}  {file}",
            l.name,
            digest(&l.digest),
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

fn sign(input: &Path, signer: &Signer, path: &Path, out: &Output) -> Result<()> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let env = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let was_signed = !keys::is_unsigned(&bytes);
    let m = decode(input, env.payload)?;
    let sealed = signer.seal(env.payload)?;
    write_atomically(path, &sealed)?;
    // The provenance record names the payload, the same signed or not: it
    // goes along.
    let (from, to) = (crate::provenance::path_for(input), crate::provenance::path_for(path));
    if from != to && crate::provenance::origins(input, env.payload).is_some() {
        let record = std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        write_atomically(&to, &record)?;
    }
    let id = envelope::key_id(&signer.public());
    if out.json {
        return out.print_json(&json!({
            "manifest": path,
            "size": sealed.len(),
            "key_id": id.to_string(),
            "was_signed": was_signed,
            "appliance": m.appliance.as_str(),
            "version": m.version,
        }));
    }
    let again = if was_signed { " (replacing its signature)" } else { "" };
    println!("{}: signed by key {id}{again}; {} version {}", path.display(), m.appliance, m.version);
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
    let unsigned = std::fs::read(path).map(|b| keys::is_unsigned(&b)).unwrap_or(false);
    if unsigned {
        println!("# {}: unsigned (sign it with `cairn manifest sign`)", path.display());
    } else {
        println!("# {}: signed by key {key_id} (signature not checked; use `cairn manifest verify`)", path.display());
    }
    print!("{}", annotated_toml(path, &m)?);
    Ok(())
}

/// The manifest as appliance TOML, each container's argv, env, cwd and
/// user annotated with where it came from when the provenance record
/// beside the manifest is there (issue 15).
fn annotated_toml(path: &Path, m: &Manifest) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let env = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let text = manifest_toml::to_toml(m);
    Ok(match crate::provenance::notes(path, env.payload) {
        Some(notes) => {
            let record = crate::provenance::path_for(path);
            format!("# value origins from {}\n{}", record.display(), manifest_toml::annotate(&text, &notes))
        }
        None => format!("# no provenance record for this manifest beside it: value origins not shown\n{text}"),
    })
}

/// `inspect --json`: the appliance TOML `inspect` prints, as JSON (the
/// same fields and values, digests as `sha256:<hex>`), with the envelope's
/// key id.
fn inspect_json(path: &Path, out: &Output) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (key_id, m) = read_unverified(path)?;
    let text = manifest_toml::to_toml(&m);
    let value: toml::Value = toml::from_str(&text).context("inspect's TOML does not parse back (a cairn bug)")?;
    let signed = !keys::is_unsigned(&bytes);
    let payload = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.payload;
    let origins = crate::provenance::origins(path, payload);
    out.print_json(&json!({
        "manifest": path,
        "signed": signed,
        "key_id": signed.then(|| key_id.to_string()),
        "payload_digest": format!("sha256:{}", cairn_format::digest::Digest::of(payload)),
        "appliance": serde_json::to_value(value)?,
        "origins": origins,
    }))
}

fn verify(path: &Path, pubkeys: &[PathBuf], out: &Output) -> Result<()> {
    let mut trusted = Vec::new();
    for p in pubkeys {
        trusted.push(keys::load_any_public(p)?);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if keys::is_unsigned(&bytes) {
        bail!("{}: not signed (sign it with `cairn manifest sign`)", path.display());
    }
    let env = Envelope::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let payload = env.verify(&trusted).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let m = decode(path, payload)?;
    if out.json {
        return out.print_json(&json!({
            "manifest": path,
            "good_signature": true,
            "key_id": env.key_id.to_string(),
            "appliance": m.appliance.as_str(),
            "version": m.version,
            "compatible": m.compatible.as_str(),
            "layers": m.layers.len(),
            "containers": m.containers.len(),
        }));
    }
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
