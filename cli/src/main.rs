//! `cairn`: the host command that builds what a cairn device boots: signing
//! keys, layer images, signed manifests and flashable disk images.
//!
//! Every command is a thin front end over `cairn_build` (and `cairn_format`), the same
//! library calls `cargo xtask` uses.

#![forbid(unsafe_code)]

mod image;
mod key;
mod layer;
mod manifest;
mod output;
mod progress;
mod provenance;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build keys, layers, signed manifests and disk images for cairn devices.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress display (summaries and errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print the result as one JSON document on stdout (schemas in
    /// docs/cli.md; digests as sha256:<hex>). Implies --quiet.
    #[arg(long, global = true)]
    json: bool,
}

const EXAMPLES: &str = "\
Examples:
  cairn key generate --out keys/release
  cairn layer build ./rootfs --out layers/base.squashfs
  cairn layer build app-image.tar --out layers/        # docker save or OCI layout: one file per layer
  cairn manifest build appliance.toml --key keys/release --out build/appliance.manifest --layers layers/
  cairn manifest build appliance.toml --unsigned --out build/unsigned.manifest   # sign elsewhere:
  cairn manifest sign build/unsigned.manifest --key keys/release --out build/appliance.manifest
  cairn manifest inspect build/appliance.manifest
  cairn manifest verify build/appliance.manifest --pubkey keys/release.pub
  cairn image assemble --board qemu-x86_64 --manifest build/appliance.manifest --layers layers/ \\
        --init cairn-init --kernel kernel-tree/ --out disk.img";

#[derive(Debug, Subcommand)]
enum Command {
    /// Signing keys (ed25519).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Layer images (squashfs).
    #[command(subcommand)]
    Layer(layer::LayerCommand),
    /// Signed manifests.
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Disk images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The boards cairn knows.
    Boards,
}

/// A path argument.
pub type FilePath = PathBuf;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = progress::Progress::new(cli.quiet || cli.json);
    let out = output::Output { json: cli.json };
    let result = match cli.command {
        Command::Key(c) => key::run(c, &out),
        Command::Layer(c) => layer::run(c, &progress, &out),
        Command::Manifest(c) => manifest::run(c, &progress, &out),
        Command::Image(c) => image::run(c, &progress, &out),
        Command::Boards => boards(&out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress.clear();
            eprintln!("cairn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn boards(out: &output::Output) -> anyhow::Result<()> {
    if out.json {
        let boards: Vec<_> = cairn_board::all()
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "default": b.name == cairn_board::DEFAULT_BOARD,
                    "rust_target": b.rust_target,
                    "kernel_package": b.kernel_package,
                    "console": b.console,
                })
            })
            .collect();
        return out.print_json(&serde_json::json!({ "boards": boards }));
    }
    for b in cairn_board::all() {
        let default = if b.name == cairn_board::DEFAULT_BOARD { " (default)" } else { "" };
        println!("{}{default}: {} kernel {}, console {}", b.name, b.rust_target, b.kernel_package, b.console);
    }
    Ok(())
}
