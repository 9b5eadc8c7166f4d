//! Fetch a board's Debian kernel and pick its modules.
//!
//! The board names the exact kernel package and Debian version
//! (`linux-image-6.1.0-57-cloud-amd64-unsigned` at `6.1.192-3`), so one
//! commit builds one disk. It is downloaded with `apt-get download
//! PACKAGE:ARCH=VERSION` and unpacked with `dpkg-deb -x` into a cache
//! directory:
//!
//! ```text
//! <cache_dir>/<package>_<version>/tree/       the unpacked package
//! <cache_dir>/<package>_<version>/extracted   marker: written last, names the .deb
//! ```
//!
//! A directory without the marker is incomplete and is fetched again.
//!
//! Debian keeps only the newest build of a kernel in its archive. When the
//! pinned one is gone, the build says so loudly and uses the newest kernel
//! of the board's meta package instead (the disk then differs from the
//! commit's); `cargo xtask kernel-update` moves the pin forward.
//!
//! Module dependencies are resolved by `cairn_build::kmod`, the same
//! code `cairn image assemble` uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_board::Board;
use cairn_build::kmod;

use crate::host_deps::{self, run};

/// A kernel unpacked in the cache, with the board's modules resolved.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel release, as `uname -r` prints it (`6.1.0-56-cloud-amd64`).
    pub version: String,
    /// The concrete Debian package (`linux-image-6.1.0-56-cloud-amd64-unsigned`).
    pub package: String,
    /// The kernel image (`boot/vmlinuz-<version>`).
    pub vmlinuz: PathBuf,
    /// `.ko` files in load order: every dependency before its dependents,
    /// each module once.
    pub modules: Vec<PathBuf>,
    /// The modules not among `modules` that the init loads only for a
    /// manifest that needs them (container networks, the firewall).
    pub on_demand: kmod::OnDemand,
}

/// Resolve, download (once; later calls reuse the cache) and unpack the
/// board's kernel, and resolve `board.modules` to `.ko` files in load order.
///
/// Module names may use `-` and `_` interchangeably. A module the kernel has
/// built in (listed in `modules.builtin`) needs no loading and is skipped
/// without error; a module that is neither a `.ko` file nor built in is an
/// error naming it and the kernel version.
pub fn fetch_kernel(board: &Board, cache_dir: &Path) -> Result<Kernel> {
    let arch = board.deb_arch;
    host_deps::ensure_apt_arch(arch)?;
    let mut package = board.kernel_package.to_string();
    let mut pkg_dir = cache_dir.join(format!("{package}_{}", board.kernel_version));
    if !pkg_dir.join(MARKER).is_file() {
        let pinned = format!("{package}:{arch}={}", board.kernel_version);
        if let Err(e) = download_and_unpack(&pinned, cache_dir, &pkg_dir) {
            let (newest, version) = newest_kernel(board)?;
            eprintln!(
                "xtask: WARNING: the pinned kernel {pinned} cannot be downloaded ({e:#}); \
                 building with the newest, {newest}={version}. Pin it with `cargo xtask kernel-update`."
            );
            package = newest;
            pkg_dir = cache_dir.join(format!("{package}_{version}"));
            if !pkg_dir.join(MARKER).is_file() {
                download_and_unpack(&format!("{package}:{arch}={version}"), cache_dir, &pkg_dir)?;
            }
        }
    }
    let version = release_of(&package)
        .with_context(|| format!("{package} is not a linux-image-<release>-unsigned package"))?
        .to_string();
    let tree = pkg_dir.join("tree");

    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no boot/vmlinuz-{version} (in {})", tree.display());
    }
    // Debian moved /lib into /usr/lib (merged /usr) in later releases.
    let mod_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(&version))
        .find(|d| d.is_dir())
        .with_context(|| format!("{package} has no lib/modules/{version} (in {})", tree.display()))?;

    let modules = kmod::resolve_modules(&mod_dir, &version, &board.modules())?;
    let on_demand = kmod::OnDemand::resolve(&mod_dir, &version, &modules, kmod::Wanted::of(board))?;
    Ok(Kernel { version, package, vmlinuz, modules, on_demand })
}

/// `linux-image-6.1.0-57-cloud-amd64-unsigned` -> `6.1.0-57-cloud-amd64`.
fn release_of(package: &str) -> Option<&str> {
    package.strip_prefix("linux-image-")?.strip_suffix("-unsigned").filter(|r| !r.is_empty())
}

/// The newest kernel of the board's meta package: (unsigned package, version).
pub fn newest_kernel(board: &Board) -> Result<(String, String)> {
    let arch = board.deb_arch;
    let image = resolve_meta(board.kernel_meta, arch)?;
    let package = format!("{image}-unsigned");
    let query = format!("{package}:{arch}");
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", &query]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text).with_context(|| format!("`apt-cache show {query}` gives no Version"))?;
    Ok((package, version))
}

/// The `Version:` field of `apt-cache show` output.
fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Rewrite a board file's kernel pin (`kernel_package` and
/// `kernel_version` fields); returns the new text.
pub fn repin(board_source: &str, package: &str, version: &str) -> Result<String> {
    let mut out = String::with_capacity(board_source.len());
    let mut replaced = 0;
    for line in board_source.split_inclusive('\n') {
        let indent = &line[..line.len() - line.trim_start().len()];
        if line.trim_start().starts_with("kernel_package:") {
            out.push_str(&format!("{indent}kernel_package: \"{package}\",\n"));
            replaced += 1;
        } else if line.trim_start().starts_with("kernel_version:") {
            out.push_str(&format!("{indent}kernel_version: \"{version}\",\n"));
            replaced += 1;
        } else {
            out.push_str(line);
        }
    }
    anyhow::ensure!(replaced == 2, "expected one kernel_package and one kernel_version line, found {replaced} lines");
    Ok(out)
}

/// Name of the file that marks a complete unpack.
pub(crate) const MARKER: &str = "extracted";

/// The concrete `linux-image-<version>` package the meta package depends on.
/// Refreshes the package lists once when apt does not know the meta package
/// (a fresh machine has empty lists).
fn resolve_meta(meta: &str, arch: &str) -> Result<String> {
    let query = format!("{meta}:{arch}");
    let attempt = || -> Result<String> {
        let out = run(Command::new("apt-cache").args(["depends", &query]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_meta_depends(&text, meta).with_context(|| {
            format!("`apt-cache depends {query}` names no linux-image-* package:\n{}", text.trim_end())
        })
    };
    match attempt() {
        Ok(image) => Ok(image),
        Err(first) => {
            if host_deps::apt_update().is_err() {
                // Not root (or apt-get update failed): report the lookup error.
                return Err(first
                    .context(format!("apt does not know {query}; refresh the package lists (sudo apt-get update)")));
            }
            attempt().with_context(|| format!("apt knows no package {query}, even after apt-get update"))
        }
    }
}

/// From `apt-cache depends` output, the first `Depends:` on a
/// `linux-image-*` package other than `meta` itself, without `:arch`.
fn parse_meta_depends(text: &str, meta: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim().trim_start_matches('|');
        let dep = line.strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        let dep = dep.split(':').next().unwrap_or(dep);
        (dep.starts_with("linux-image-") && dep != meta).then(|| dep.to_string())
    })
}

/// `apt-get download` the package into a private directory under
/// `cache_dir`, unpack it, write the marker and move it into place as
/// `pkg_dir`. Concurrent runs each work in their own directory; the first to
/// finish wins and the others use its result.
/// `spec` is `PACKAGE:ARCH=VERSION`.
pub(crate) fn download_and_unpack(spec: &str, cache_dir: &Path, pkg_dir: &Path) -> Result<()> {
    fs::create_dir_all(cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let package = spec.split(':').next().unwrap_or(spec);
    remove_stale_temp_dirs(cache_dir, package);
    let tmp = cache_dir.join(format!(".tmp-{package}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    let result = (|| -> Result<()> {
        eprintln!("xtask: downloading {spec} with apt-get");
        // As root apt warns that the download runs unsandboxed; harmless,
        // and the output is only shown when the command fails.
        download(spec, &tmp)?;
        let deb = single_deb(&tmp)?;
        let tree = tmp.join("tree");
        eprintln!("xtask: unpacking {} with dpkg-deb", file_name(&deb));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))?;
        fs::write(tmp.join(MARKER), format!("{}\n", file_name(&deb)))
            .with_context(|| format!("cannot write {}", tmp.join(MARKER).display()))?;
        if pkg_dir.exists() && !pkg_dir.join(MARKER).is_file() {
            // Left over from an older, interrupted layout or run.
            fs::remove_dir_all(pkg_dir).with_context(|| format!("cannot remove {}", pkg_dir.display()))?;
        }
        if let Err(e) = fs::rename(&tmp, pkg_dir) {
            if !pkg_dir.join(MARKER).is_file() {
                return Err(e).with_context(|| format!("cannot move {} to {}", tmp.display(), pkg_dir.display()));
            }
            // Another run finished first; use its copy.
        }
        Ok(())
    })();
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// `apt-get download SPEC` into `dir`; refreshes the package lists once
/// when apt does not know the version (a fresh machine has empty lists).
fn download(spec: &str, dir: &Path) -> Result<()> {
    let attempt = || run(Command::new("apt-get").args(["download", "-q", spec]).current_dir(dir)).map(drop);
    attempt().or_else(|first| {
        if host_deps::apt_update().is_err() {
            return Err(first);
        }
        attempt()
    })
}

/// Remove `.tmp-<package>-<pid>` directories whose process is gone.
fn remove_stale_temp_dirs(cache_dir: &Path, package: &str) {
    let prefix = format!(".tmp-{package}-");
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The one `.deb` file `apt-get download` left in `dir`.
fn single_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => bail!("expected one .deb in {} after apt-get download, found {n}", dir.display()),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_depends_line_is_parsed() {
        let amd = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_meta_depends(amd, "linux-image-cloud-amd64").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let arm = "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-56-cloud-arm64:arm64\n";
        assert_eq!(
            parse_meta_depends(arm, "linux-image-cloud-arm64").as_deref(),
            Some("linux-image-6.1.0-56-cloud-arm64")
        );
        assert_eq!(parse_meta_depends("", "linux-image-cloud-arm64"), None);
        // The generic boards' meta packages (linux-image-amd64, -arm64).
        let generic = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-57-arm64:arm64\n";
        assert_eq!(parse_meta_depends(generic, "linux-image-arm64").as_deref(), Some("linux-image-6.1.0-57-arm64"));
    }

    #[test]
    fn releases_versions_and_pins() {
        assert_eq!(release_of("linux-image-6.1.0-57-cloud-amd64-unsigned"), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(release_of("linux-image-cloud-amd64"), None);
        assert_eq!(release_of("linux-image-6.1.0-57-amd64-unsigned"), Some("6.1.0-57-amd64"));
        assert_eq!(release_of("linux-image-6.1.0-57-arm64-unsigned"), Some("6.1.0-57-arm64"));
        assert_eq!(
            parse_version("Package: x\nVersion: 6.1.192-3\nArchitecture: amd64\n").as_deref(),
            Some("6.1.192-3")
        );
        assert_eq!(parse_version("Package: x\n"), None);
        let src = "pub static BOARD: Board = Board {\n    kernel_package: \"old\",\n    kernel_version: \"1\",\n};\n";
        let new = repin(src, "linux-image-6.1.0-58-cloud-amd64-unsigned", "6.1.200-1").unwrap();
        assert!(new.contains("    kernel_package: \"linux-image-6.1.0-58-cloud-amd64-unsigned\",\n"), "{new}");
        assert!(new.contains("    kernel_version: \"6.1.200-1\",\n"), "{new}");
        assert!(repin("no pins here\n", "a", "b").is_err());
    }
}
