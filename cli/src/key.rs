//! `cairn key`: make, show and convert signing keys.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::keys::{self, SecretFormat};
use cairn_build::secureboot::SbKey;
use cairn_format::envelope::key_id;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new ed25519 key pair: NAME (secret, mode 0600) and NAME.pub.
    ///
    /// The secret key is PKCS#8 PEM (what `openssl genpkey -algorithm
    /// ed25519` writes, and what HSM and KMS tools import) unless --format
    /// hex. NAME.pub holds the public key as 64 hex characters: give it to
    /// the initramfs of the devices (`cairn image assemble --trust NAME.pub`).
    /// Refuses to overwrite an existing key.
    Generate {
        /// Path of the secret key file; the public key is written to NAME.pub.
        #[arg(long)]
        out: PathBuf,
        /// How the secret key file is written.
        #[arg(long, value_enum, default_value_t = Format::Pem)]
        format: Format,
    },
    /// Print a key's public key (hex) and its id (the id devices log).
    ///
    /// KEY is a secret key file (PKCS#8 PEM or hex; its mode is checked), a
    /// `.pub` file (hex) or a public key PEM (`openssl pkey -pubout`).
    Show {
        /// The key file.
        key: PathBuf,
        /// Also print the public key as PEM (SPKI, what openssl reads).
        #[arg(long)]
        pem: bool,
    },
    /// Write a key in another format: a secret key as PKCS#8 PEM or hex
    /// (mode 0600, never over an existing file), a public key (from a PEM,
    /// e.g. a KMS's export, or hex) as hex, for `cairn image assemble --trust`, or PEM.
    Convert {
        /// The key file to read.
        key: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The format to write.
        #[arg(long, value_enum)]
        format: Format,
    },
    /// Make a UEFI Secure Boot signing key: NAME.sb.key (RSA-2048, PKCS#8
    /// PEM, mode 0600), NAME.sb.crt (self-signed X.509 v3 certificate,
    /// sha256WithRSAEncryption, PEM) and NAME.sb.der (the same certificate
    /// as DER).
    ///
    /// The certificate is what goes into the firmware's PK, KEK and db
    /// (docs/security.md, "Secure Boot"); the key signs the boot loader and
    /// the unified kernel images. Refuses to overwrite an existing file.
    SecureBoot {
        /// Path prefix of the three files.
        name: PathBuf,
        /// The certificate's subject common name.
        #[arg(long, default_value = "cairn Secure Boot key")]
        common_name: String,
        /// How many years the certificate is valid (UEFI firmware does not
        /// check expiry when it verifies an image, but other tools do).
        #[arg(long, default_value_t = 20)]
        years: u32,
    },
}

/// Key file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// PEM: PKCS#8 for secret keys, SPKI for public keys.
    Pem,
    /// 64 hex characters (the ed25519 seed, or the public key).
    Hex,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Pem => "pem",
            Format::Hex => "hex",
        }
    }
}

pub fn run(cmd: KeyCommand, out: &Output) -> Result<()> {
    match cmd {
        KeyCommand::Generate { out: path, format } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let key = keys::generate()?;
            let secret = match format {
                Format::Pem => SecretFormat::Pem,
                Format::Hex => SecretFormat::Hex,
            };
            keys::save_as(&key, &path, secret)?;
            let public = key.verifying_key().to_bytes();
            let pub_path = keys::public_path(&path);
            if out.json {
                return out.print_json(&json!({
                    "secret_key": path,
                    "secret_format": format.name(),
                    "public_key": pub_path,
                    "public": hex(&public),
                    "key_id": key_id(&public).to_string(),
                }));
            }
            println!("secret key  {} ({}, mode 0600: keep it secret)", path.display(), format.name());
            println!("public key  {}", pub_path.display());
            print_public(&public);
            Ok(())
        }
        KeyCommand::Show { key, pem } => {
            let is_public = keys::is_public_file(&key)?;
            let public = keys::load_any_public(&key)?;
            let public_pem = keys::public_pem(&public).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            if out.json {
                return out.print_json(&json!({
                    "key": key,
                    "kind": if is_public { "public" } else { "secret" },
                    "public": hex(&public),
                    "public_pem": public_pem,
                    "key_id": key_id(&public).to_string(),
                }));
            }
            print_public(&public);
            if pem {
                print!("{public_pem}");
            }
            Ok(())
        }
        KeyCommand::Convert { key, out: to, format } => convert(&key, &to, format, out),
        KeyCommand::SecureBoot { name, common_name, years } => secure_boot(&name, &common_name, years, out),
    }
}

fn secure_boot(name: &Path, common_name: &str, years: u32, out: &Output) -> Result<()> {
    if let Some(dir) = name.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = SbKey::generate(common_name, years)?;
    let paths = key.save(name)?;
    if out.json {
        return out.print_json(&json!({
            "secret_key": paths.key,
            "certificate": paths.cert,
            "certificate_der": paths.der,
            "subject": key.subject(),
            "not_after": key.not_after(),
            "sha256": key.fingerprint(),
        }));
    }
    println!("secret key   {} (RSA-2048, PKCS#8 PEM, mode 0600: keep it secret)", paths.key.display());
    println!("certificate  {} (PEM), {} (DER)", paths.cert.display(), paths.der.display());
    println!("subject      {}", key.subject());
    println!("not after    {}", key.not_after());
    println!("sha256       {}", key.fingerprint());
    Ok(())
}

fn convert(from: &Path, to: &Path, format: Format, out: &Output) -> Result<()> {
    if to.exists() {
        bail!("{} exists; cairn key convert never overwrites a file", to.display());
    }
    let is_public = keys::is_public_file(from)?;
    let public = if is_public {
        let public = keys::load_public(from)?;
        let text = match format {
            Format::Hex => keys::public_hex_line(&public),
            Format::Pem => keys::public_pem(&public).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?,
        };
        std::fs::write(to, text).with_context(|| format!("cannot write {}", to.display()))?;
        public
    } else {
        let key = keys::load(from)?;
        let secret = match format {
            Format::Pem => SecretFormat::Pem,
            Format::Hex => SecretFormat::Hex,
        };
        keys::write_secret(&key, to, secret)?;
        key.verifying_key().to_bytes()
    };
    let kind = if is_public { "public" } else { "secret" };
    if out.json {
        return out.print_json(&json!({
            "key": from,
            "out": to,
            "kind": kind,
            "format": format.name(),
            "public": hex(&public),
            "key_id": key_id(&public).to_string(),
        }));
    }
    println!("{kind} key  {} ({})", to.display(), format.name());
    print_public(&public);
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_public(public: &[u8; 32]) {
    println!("public {}", hex(public));
    println!("id     {}", key_id(public));
}
