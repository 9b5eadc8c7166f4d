//! Fetch a board's Debian kernel and pick its modules.
//!
//! The board names a Debian meta package (`linux-image-cloud-amd64`); apt
//! resolves it to the concrete kernel (`linux-image-6.1.0-56-cloud-amd64`),
//! whose `-unsigned` package is downloaded with `apt-get download` and
//! unpacked with `dpkg-deb -x` into a cache directory:
//!
//! ```text
//! <cache_dir>/<package>/tree/       the unpacked package
//! <cache_dir>/<package>/extracted   marker: written last, names the .deb
//! ```
//!
//! A directory without the marker is incomplete and is fetched again. The
//! package lists decide the version, so a Debian kernel update gives a new
//! package name and a fresh directory next to the old one.
//!
//! Debian packages do not ship `modules.dep` (depmod writes it at install
//! time), so module dependencies come from each `.ko` file's `.modinfo`
//! section (`depends=`), read with a small ELF64 little-endian parser.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_board::Board;

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
    let image = resolve_meta(board.kernel_package, arch)?;
    let version = image
        .strip_prefix("linux-image-")
        .with_context(|| format!("{} depends on {image}, which is not a linux-image-* package", board.kernel_package))?
        .to_string();
    let package = format!("{image}-unsigned");

    let pkg_dir = cache_dir.join(&package);
    if !pkg_dir.join(MARKER).is_file() {
        download_and_unpack(&package, arch, cache_dir, &pkg_dir)?;
    }
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

    let modules = resolve_modules(&mod_dir, &version, board.modules)?;
    Ok(Kernel { version, package, vmlinuz, modules })
}

/// Name of the file that marks a complete unpack.
const MARKER: &str = "extracted";

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
fn download_and_unpack(package: &str, arch: &str, cache_dir: &Path, pkg_dir: &Path) -> Result<()> {
    fs::create_dir_all(cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    remove_stale_temp_dirs(cache_dir, package);
    let tmp = cache_dir.join(format!(".tmp-{package}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    let result = (|| -> Result<()> {
        eprintln!("xtask: downloading {package}:{arch} with apt-get");
        // As root apt warns that the download runs unsandboxed; harmless,
        // and the output is only shown when the command fails.
        run(Command::new("apt-get").args(["download", "-q", &format!("{package}:{arch}")]).current_dir(&tmp))?;
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

/// Module names treat `-` and `_` alike; the kernel uses `_`.
fn normalise(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The `.ko` files for `wanted` and everything they depend on, in load order.
fn resolve_modules(mod_dir: &Path, version: &str, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let index = ModuleIndex::scan(mod_dir)?;
    let mut roots = Vec::new();
    for name in wanted {
        let n = normalise(name);
        if index.files.contains_key(&n) {
            roots.push(n);
        } else if !index.builtin.contains(&n) {
            bail!("{}", index.missing(&n, version, None));
        }
    }
    let mut cache: HashMap<String, PathBuf> = HashMap::new();
    let order = load_order(&roots, |name| {
        let path = index.path(name, version)?;
        cache.insert(name.to_string(), path.clone());
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let modinfo = elf_section(&bytes, ".modinfo").with_context(|| format!("reading {}", path.display()))?;
        let mut deps = Vec::new();
        for dep in modinfo_depends(modinfo) {
            if index.files.contains_key(&dep) {
                deps.push(dep);
            } else if !index.builtin.contains(&dep) {
                bail!("{}", index.missing(&dep, version, Some(name)));
            }
        }
        Ok(deps)
    })?;
    order
        .iter()
        .map(|n| cache.get(n).cloned().with_context(|| format!("module {n} was ordered but never read")))
        .collect()
}

/// The modules one kernel ships, by normalised name.
struct ModuleIndex {
    /// Loadable `.ko` files (more than one per name is an error on use).
    files: BTreeMap<String, Vec<PathBuf>>,
    /// Compressed modules (`.ko.xz` etc.), which this tool does not unpack.
    compressed: BTreeMap<String, PathBuf>,
    /// Modules built into the kernel image (`modules.builtin`).
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    fn scan(mod_dir: &Path) -> Result<Self> {
        let mut idx = ModuleIndex { files: BTreeMap::new(), compressed: BTreeMap::new(), builtin: BTreeSet::new() };
        let mut stack = vec![mod_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<(PathBuf, bool)> = fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?.is_dir()))))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("cannot read {}", dir.display()))?;
            entries.sort();
            for (path, is_dir) in entries {
                if is_dir {
                    stack.push(path);
                    continue;
                }
                let name = file_name(&path);
                if let Some(stem) = name.strip_suffix(".ko") {
                    idx.files.entry(normalise(stem)).or_default().push(path);
                } else if let Some((stem, _)) = name.split_once(".ko.") {
                    idx.compressed.insert(normalise(stem), path);
                }
            }
        }
        let builtin = mod_dir.join("modules.builtin");
        if builtin.is_file() {
            let text = fs::read_to_string(&builtin).with_context(|| format!("cannot read {}", builtin.display()))?;
            idx.builtin = parse_modules_builtin(&text);
        }
        Ok(idx)
    }

    fn path(&self, name: &str, version: &str) -> Result<PathBuf> {
        match self.files.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(many) if many.len() > 1 => bail!(
                "kernel {version} has {} files for module {name}: {}",
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            _ => bail!("{}", self.missing(name, version, None)),
        }
    }

    fn missing(&self, name: &str, version: &str, needed_by: Option<&str>) -> String {
        let by = needed_by.map(|p| format!(" (needed by {p})")).unwrap_or_default();
        match self.compressed.get(name) {
            Some(p) => format!(
                "kernel module {name}{by} of kernel {version} is compressed ({}); xtask loads only plain .ko files",
                p.display()
            ),
            None => format!("kernel {version} has no module {name}{by}: neither a .ko file nor built in"),
        }
    }
}

/// Module names from `modules.builtin` (`kernel/fs/ext4/ext4.ko` per line).
fn parse_modules_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .filter(|s| !s.is_empty())
        .map(normalise)
        .collect()
}

/// Depth-first topological order of `roots` and everything they depend on:
/// dependencies first, each name once, deterministic for the same inputs
/// (roots in the given order, each module's dependencies sorted by name). A
/// dependency cycle is an error that shows the cycle.
fn load_order<F>(roots: &[String], mut deps_of: F) -> Result<Vec<String>>
where
    F: FnMut(&str) -> Result<Vec<String>>,
{
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<F>(
        name: &str,
        deps_of: &mut F,
        marks: &mut HashMap<String, Mark>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()>
    where
        F: FnMut(&str) -> Result<Vec<String>>,
    {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == name).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(name.to_string());
                bail!("kernel module dependency cycle: {}", cycle.join(" -> "));
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        let mut deps = deps_of(name)?;
        deps.sort();
        deps.dedup();
        for dep in &deps {
            visit(dep, deps_of, marks, path, out)?;
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        out.push(name.to_string());
        Ok(())
    }

    let mut marks = HashMap::new();
    let mut out = Vec::new();
    for root in roots {
        visit(root, &mut deps_of, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// The normalised module names in a `.modinfo` section's `depends=` entry.
fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(normalise).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect()
}

/// The contents of the section called `name` in a little-endian ELF64 file
/// (kernel modules for x86_64 and aarch64 both are).
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8]> {
    let u16_at = |off: usize| -> Result<u16> {
        let b = elf.get(off..off + 2).context("ELF file truncated")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| -> Result<u32> {
        let b = elf.get(off..off + 4).context("ELF file truncated")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| -> Result<u64> {
        let b = elf.get(off..off + 8).context("ELF file truncated")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    let usize_of = |v: u64| usize::try_from(v).context("ELF offset out of range");

    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("not an ELF file");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a little-endian 64-bit ELF file");
    }
    let shoff = usize_of(u64_at(0x28)?)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    if shoff == 0 || shentsize < 64 {
        bail!("ELF file has no usable section headers");
    }
    let header = |i: usize| -> Result<usize> {
        let off = i.checked_mul(shentsize).and_then(|o| o.checked_add(shoff)).context("ELF section index overflow")?;
        elf.get(off..off + 64).context("ELF section header out of bounds")?;
        Ok(off)
    };
    // Extended numbering: with 0xff00 or more sections the real count and
    // string table index live in section header 0.
    let mut shnum = usize::from(u16_at(0x3c)?);
    if shnum == 0 {
        shnum = usize_of(u64_at(header(0)? + 32)?)?;
    }
    let mut shstrndx = usize::from(u16_at(0x3e)?);
    if shstrndx == 0xffff {
        shstrndx = usize::try_from(u32_at(header(0)? + 40)?).context("ELF index out of range")?;
    }
    let contents = |i: usize| -> Result<&'a [u8]> {
        let h = header(i)?;
        let off = usize_of(u64_at(h + 24)?)?;
        let size = usize_of(u64_at(h + 32)?)?;
        off.checked_add(size).and_then(|end| elf.get(off..end)).context("ELF section out of bounds")
    };
    let strtab = contents(shstrndx)?;
    for i in 0..shnum {
        let h = header(i)?;
        let name_off = usize::try_from(u32_at(h)?).context("ELF index out of range")?;
        let Some(rest) = strtab.get(name_off..) else {
            continue;
        };
        let sec_name = rest.split(|&b| b == 0).next().unwrap_or_default();
        if sec_name == name.as_bytes() {
            return contents(i);
        }
    }
    bail!("ELF file has no {name} section")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE file: null section, .shstrtab, .text, .modinfo.
    fn synthetic_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.text\0.modinfo\0";
        let text = [0x90u8; 8];
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // ELFDATA2LSB
        elf[6] = 1; // EV_CURRENT
        let place = |elf: &mut Vec<u8>, data: &[u8]| {
            let off = elf.len();
            elf.extend_from_slice(data);
            (off as u64, data.len() as u64)
        };
        let strtab_at = place(&mut elf, shstrtab);
        let text_at = place(&mut elf, &text);
        let modinfo_at = place(&mut elf, modinfo);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len() as u64;
        let mut sh = |name: u32, (off, size): (u64, u64)| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes()); // SHT_PROGBITS
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, (0, 0));
        sh(1, strtab_at);
        sh(11, text_at);
        sh(17, modinfo_at);
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_depends_from_synthetic_module() -> Result<()> {
        let ko = synthetic_ko(b"license=GPL\0depends=virtio_ring,dm-mod,virtio\0\0\0name=virtio_pci\0vermagic=6.1.0\0");
        let modinfo = elf_section(&ko, ".modinfo")?;
        assert_eq!(modinfo_depends(modinfo), names(&["virtio_ring", "dm_mod", "virtio"]));
        assert_eq!(elf_section(&ko, ".text")?, &[0x90u8; 8]);
        assert!(elf_section(&ko, ".nothere").is_err());
        Ok(())
    }

    #[test]
    fn empty_depends_means_no_dependencies() -> Result<()> {
        let ko = synthetic_ko(b"depends=\0name=squashfs\0");
        assert!(modinfo_depends(elf_section(&ko, ".modinfo")?).is_empty());
        assert!(modinfo_depends(b"name=x\0").is_empty());
        Ok(())
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        assert!(elf_section(b"not an elf at all", ".modinfo").is_err());
        let mut ko = synthetic_ko(b"depends=\0");
        ko.truncate(ko.len() - 10);
        assert!(elf_section(&ko, ".modinfo").is_err());
        let mut be = synthetic_ko(b"depends=\0");
        be[5] = 2; // big-endian
        assert!(elf_section(&be, ".modinfo").is_err());
    }

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges.iter().map(|(k, v)| (k.to_string(), names(v))).collect()
    }

    #[test]
    fn diamond_is_ordered_dependencies_first_each_once() -> Result<()> {
        // top -> left, right; left, right -> base
        let g = graph(&[("top", &["right", "left"]), ("left", &["base"]), ("right", &["base"]), ("base", &[])]);
        let order = load_order(&names(&["top", "left"]), |n| Ok(g[n].clone()))?;
        assert_eq!(order, names(&["base", "left", "right", "top"]));
        Ok(())
    }

    #[test]
    fn roots_keep_their_order_when_independent() -> Result<()> {
        let g = graph(&[("b", &["a"]), ("a", &[]), ("z", &[])]);
        assert_eq!(load_order(&names(&["z", "b"]), |n| Ok(g[n].clone()))?, names(&["z", "a", "b"]));
        Ok(())
    }

    #[test]
    fn cycle_is_an_error_naming_it() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let err = load_order(&names(&["a"]), |n| Ok(g[n].clone())).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("kernel module dependency cycle: a -> b -> c -> a"));
    }

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
    }

    #[test]
    fn builtin_list_and_names_are_normalised() {
        let b = parse_modules_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/md/dm-mod.ko\n\n");
        assert!(b.contains("ext4") && b.contains("dm_mod") && b.len() == 2);
        assert_eq!(normalise("dm-verity"), "dm_verity");
    }
}
