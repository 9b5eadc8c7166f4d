//! `cairn`: the host command that builds what a cairn device boots: signing
//! keys, layer images, signed manifests and flashable disk images.
//!
//! Every command is a thin front end over `cairn_build` (and `cairn_format`), the same
//! library calls `cargo xtask` uses.

#![forbid(unsafe_code)]

mod bundle;
mod image;
mod key;
mod layer;
mod manifest;
mod output;
mod progress;
mod provenance;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
        --init cairn-init --trust keys/release.pub --product acme-thermostat-v1 --kernel kernel-tree/ --out disk.img
  cairn bundle build --manifest build/v2.manifest --layers layers/ --key keys/release --base build/v1.manifest --out v2.cairn
  cairn bundle verify v2.cairn --pubkey keys/release.pub";

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
    /// Update bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// The boards cairn knows.
    Boards,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: cairn completions bash > /usr/share/bash-completion/completions/cairn
    /// zsh:  cairn completions zsh > "${fpath[1]}/_cairn"
    /// fish: cairn completions fish > ~/.config/fish/completions/cairn.fish
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: cairn(1) and one per subcommand (cairn-manifest-build(1), ...).
    ///
    /// Without --out, prints cairn(1) to stdout.
    Man {
        /// Directory to write every page into (e.g. /usr/local/share/man/man1).
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
        Command::Bundle(c) => bundle::run(c, &progress, &out),
        Command::Boards => boards(&out),
        Command::Completions { shell } => {
            // Into a buffer: clap_complete panics on a failed write.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut buf);
            print_all(&buf)
        }
        Command::Man { out: dir } => man(dir.as_deref(), &out),
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

/// Write `bytes` to stdout; a reader that went away (`| head`) is fine.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes).and_then(|()| std::io::stdout().flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// cairn(1), or every page into `dir`.
fn man(dir: Option<&std::path::Path>, out: &output::Output) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut cmd = Cli::command();
    cmd.build();
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        return print_all(&buf);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = Vec::new();
    fn walk(cmd: clap::Command, name: String, pages: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub.clone(), format!("{name}-{}", sub.get_name()), pages);
        }
        pages.push((name, cmd));
    }
    walk(cmd, "cairn".into(), &mut pages);
    let mut written = Vec::new();
    for (name, cmd) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.name(name.clone())).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        manifest::write_atomically(&path, &buf)?;
        written.push(path);
    }
    written.sort();
    if out.json {
        return out.print_json(&serde_json::json!({ "pages": written }));
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
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
