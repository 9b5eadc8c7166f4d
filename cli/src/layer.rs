//! `cairn layer`: build layer images.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_build::appliance::parse_size;
use cairn_build::import;
use cairn_build::layer::{self, LayerOptions, Step};
use clap::Subcommand;
use serde_json::json;

use crate::output::{digest, Output};
use crate::progress::{size, Progress};

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Build layer images (squashfs) from a directory, a rootfs tar, a
    /// `docker save` archive or an OCI image layout, and print each digest.
    ///
    /// A directory or a plain tar of a root filesystem (e.g. `docker export`
    /// output; gzip or zstd compressed too) gives one layer, written to the
    /// file --out. An image gives one layer per image layer, written into
    /// the directory --out as NAME.squashfs, lowest first; OCI whiteouts
    /// become overlayfs whiteouts so the device stacks them as Docker does.
    /// With --flatten an image gives one merged layer.
    ///
    /// Owners, modes, xattrs, symlinks, hard links and FIFOs are kept;
    /// device nodes (other than overlay whiteouts, character devices 0:0)
    /// and overlayfs xattrs (trusted.overlay.*) are refused. Archives and
    /// images keep their modification times; a directory's are clamped to
    /// SOURCE_DATE_EPOCH (0 when unset). Entries are sorted, so the same
    /// source always gives the same bytes and digest.
    Build {
        /// Directory, tar archive, docker save archive or OCI layout; or a
        /// skopeo-style reference: oci:DIR[:TAG], oci-archive:FILE[:TAG],
        /// docker-archive:FILE[:NAME:TAG or :@N].
        source: PathBuf,
        /// Output file (one layer) or directory (several layers).
        #[arg(long)]
        out: PathBuf,
        /// Merge an image's layers into one layer.
        #[arg(long)]
        flatten: bool,
        /// Platform of a multi-platform image, e.g. linux/arm64.
        #[arg(long)]
        platform: Option<String>,
        /// Take the platform of a multi-platform image from this board's
        /// architecture (see `cairn boards`), unless --platform is given.
        #[arg(long)]
        board: Option<String>,
        /// Refuse an archive or image whose files add up to more than this
        /// (e.g. 512M); also the most a compressed image archive may
        /// decompress to in $TMPDIR. The default, 4G, is far above any
        /// layer an embedded device holds, and bounds what a hostile
        /// archive can make the build write.
        #[arg(long, value_parser = parse_size_arg, default_value = "4G")]
        max_size: u64,
        /// Refuse a layer image larger than a layer slot of this size (e.g. 16M).
        #[arg(long, value_parser = parse_size_arg)]
        slot_size: Option<u64>,
    },
}

/// The OCI platform of a board's architecture.
pub fn board_platform(name: &str) -> Result<&'static str> {
    let board = cairn_board::by_name(name)
        .with_context(|| format!("unknown board {name:?}; cairn knows {}", cairn_board::names().join(", ")))?;
    import::platform_of_target(board.rust_target)
        .with_context(|| format!("board {name}: no OCI platform for target {}", board.rust_target))
}

/// Sizes with K/M/G suffixes, as in appliance files.
pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("{s:?} is not a size (a number with an optional K, M or G suffix)"))
}

pub fn run(cmd: LayerCommand, progress: &Progress, out: &Output) -> Result<()> {
    let LayerCommand::Build { source, out: dest, flatten, platform, board, max_size, slot_size } = cmd;
    let (source, select) = match source.to_str() {
        Some(s) => import::parse_reference(s)?,
        None => (source, import::Select::default()),
    };
    let platform = match (platform, board) {
        (Some(p), _) => Some(p),
        (None, Some(b)) => Some(board_platform(&b)?.to_owned()),
        (None, None) => None,
    };
    let opts = LayerOptions { flatten, platform, max_bytes: max_size, max_image_bytes: slot_size, select };
    let files = layer::build(&source, &dest, &opts, &mut |step| match step {
        Step::Reading(p) => progress.step(format!("reading {}", p.display())),
        Step::Writing { name, index, count } => progress.step(format!("writing layer {}/{count} {name}", index + 1)),
    })?;
    progress.clear();
    if out.json {
        return out.print_json(&json!({
            "source": source,
            "layers": files.iter().map(|f| json!({
                "name": f.name,
                "path": f.path,
                "digest": digest(&f.digest),
                "size": f.size,
                "source_digest": f.source_digest,
                "verity_root_hash": f.verity.root_hash.to_string(),
                "image": f.image,
            })).collect::<Vec<_>>(),
        }));
    }
    for f in &files {
        let from = f.source_digest.as_deref().map(|d| format!("  (from {d})")).unwrap_or_default();
        println!(
            "{}  {}  {}  {}  verity root {}{from}",
            digest(&f.digest),
            size(f.size),
            f.name,
            f.path.display(),
            f.verity.root_hash
        );
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    eprintln!(
        "cairn: {} layer{} built, {} in {:.1} s",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        size(total),
        progress.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: LayerCommand,
    }

    #[test]
    fn max_size_defaults_to_the_library_default() {
        let parsed = Cli::try_parse_from(["cairn", "build", "src", "--out", "o"]).map_err(|e| e.to_string());
        let Ok(Cli { cmd: LayerCommand::Build { max_size, .. } }) = parsed else { panic!("{parsed:?}") };
        assert_eq!(max_size, cairn_build::import::DEFAULT_MAX_BYTES);
        assert_eq!(max_size, 4 << 30);
        let parsed = Cli::try_parse_from(["cairn", "build", "src", "--out", "o", "--max-size", "512M"]);
        let Ok(Cli { cmd: LayerCommand::Build { max_size, .. } }) = parsed else { panic!("{parsed:?}") };
        assert_eq!(max_size, 512 << 20);
    }
}
