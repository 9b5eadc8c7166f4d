//! `cairn key`: make and show signing keys.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_build::keys;
use cairn_format::envelope::key_id;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new ed25519 key pair: NAME (secret, mode 0600) and NAME.pub.
    ///
    /// Refuses to overwrite an existing key. The public key goes into the
    /// init binary the devices run (CAIRN_TRUSTED_KEYS at build time).
    Generate {
        /// Path of the secret key file; the public key is written to NAME.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a key's public key (hex) and its id (the id devices log).
    ///
    /// KEY is a secret key file (its mode is checked) or a `.pub` file.
    Show {
        /// The key file.
        key: PathBuf,
    },
}

pub fn run(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Generate { out } => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let key = keys::generate()?;
            keys::save(&key, &out)?;
            let public = key.verifying_key().to_bytes();
            println!("secret key  {} (mode 0600: keep it secret)", out.display());
            println!("public key  {}", keys::public_path(&out).display());
            print_public(&public);
            Ok(())
        }
        KeyCommand::Show { key } => {
            let public = if key.extension().is_some_and(|e| e == "pub") {
                keys::load_public(&key)?
            } else {
                keys::load(&key)?.verifying_key().to_bytes()
            };
            print_public(&public);
            Ok(())
        }
    }
}

fn print_public(public: &[u8; 32]) {
    let hex: String = public.iter().map(|b| format!("{b:02x}")).collect();
    println!("public {hex}");
    println!("id     {}", key_id(public));
}
