//! Kernel modules for the initramfs: which `.ko` files a board's module
//! list needs, in the order the init must load them.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod writes it at
//! install time), so dependencies come from each `.ko` file's `.modinfo`
//! section (`depends=`), read with a small ELF64 little-endian parser.
//! Modules built into the kernel (`modules.builtin`) need no loading.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// Why the modules could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// Reading the module tree or a module.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A module file that is not a readable ELF64 little-endian object.
    #[error("{path}: {reason}")]
    Elf {
        /// The module.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A module that is missing, compressed, ambiguous, or in a cycle.
    #[error("{0}")]
    Module(String),
    /// No `lib/modules/<version>` in a kernel tree.
    #[error("{0}: no lib/modules/<version> directory (an unpacked kernel package is expected)")]
    NoModuleDir(PathBuf),
}

type Result<T, E = KmodError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KmodError + '_ {
    move |error| KmodError::Io { path: path.to_owned(), error }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// In an unpacked kernel package (or a root filesystem), the one
/// `lib/modules/<version>` (or `usr/lib/modules/<version>`) directory:
/// returns (version, directory). Several versions is an error.
pub fn find_module_dir(tree: &Path) -> Result<(String, PathBuf)> {
    let mut found = Vec::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        let dir = tree.join(base);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries {
            let e = e.map_err(io(&dir))?;
            if e.path().join("kernel").is_dir() {
                found.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(KmodError::NoModuleDir(tree.to_owned())),
        _ => Err(KmodError::Module(format!(
            "{}: several kernels ({}); point at one unpacked kernel",
            tree.display(),
            found.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Module names treat `-` and `_` alike; the kernel uses `_`.
fn normalise(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The `.ko` files for `wanted` (module names, `-` and `_` alike) and
/// everything they depend on, in load order: every dependency before its
/// dependents, each module once. Built-in modules are skipped.
pub fn resolve_modules(mod_dir: &Path, version: &str, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let index = ModuleIndex::scan(mod_dir)?;
    let mut roots = Vec::new();
    for name in wanted {
        let n = normalise(name);
        if index.files.contains_key(&n) {
            roots.push(n);
        } else if !index.builtin.contains(&n) {
            return Err(KmodError::Module(index.missing(&n, version, None)));
        }
    }
    let mut cache: HashMap<String, PathBuf> = HashMap::new();
    let order = load_order(&roots, |name| {
        let path = index.path(name, version)?;
        cache.insert(name.to_string(), path.clone());
        let bytes = fs::read(&path).map_err(io(&path))?;
        let modinfo =
            elf_section(&bytes, ".modinfo").map_err(|reason| KmodError::Elf { path: path.clone(), reason })?;
        let mut deps = Vec::new();
        for dep in modinfo_depends(modinfo) {
            if index.files.contains_key(&dep) {
                deps.push(dep);
            } else if !index.builtin.contains(&dep) {
                return Err(KmodError::Module(index.missing(&dep, version, Some(name))));
            }
        }
        Ok(deps)
    })?;
    order
        .iter()
        .map(|n| {
            cache.get(n).cloned().ok_or_else(|| KmodError::Module(format!("module {n} was ordered but never read")))
        })
        .collect()
}

/// The `.ko` files that `wanted` needs (itself and its dependencies, in
/// load order) that are not already in `loaded` (the boot modules): the
/// modules loaded later, on demand, after those.
pub fn resolve_later(mod_dir: &Path, version: &str, loaded: &[PathBuf], wanted: &[&str]) -> Result<Vec<PathBuf>> {
    Ok(resolve_modules(mod_dir, version, wanted)?.into_iter().filter(|p| !loaded.contains(p)).collect())
}

/// Modules the init loads only when they are needed, each group in load
/// order, none of them among the boot modules or in another group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnDemand {
    /// Bridges and veth pairs: for a manifest with container networks
    /// (`lib/modules/load-order-networks`).
    pub networks: Vec<PathBuf>,
    /// The firewall: for a network with egress or a published port
    /// (`lib/modules/load-order-netfilter`).
    pub netfilter: Vec<PathBuf>,
    /// The firmware's variables (efivarfs): on a machine booted through
    /// UEFI only (`lib/modules/load-order-efi`). Without UEFI firmware its
    /// init fails with ENODEV, which took 68 ms of an emulated boot.
    pub efi: Vec<PathBuf>,
    /// The data partition's quota format: once the first starts are issued,
    /// or when the boot first needs it (`lib/modules/load-order-late`).
    pub late: Vec<PathBuf>,
}

/// The modules of each [`OnDemand`] group, by module name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted<'a> {
    /// See [`OnDemand::networks`].
    pub networks: &'a [&'a str],
    /// See [`OnDemand::netfilter`].
    pub netfilter: &'a [&'a str],
    /// See [`OnDemand::efi`].
    pub efi: &'a [&'a str],
    /// See [`OnDemand::late`].
    pub late: &'a [&'a str],
}

impl Wanted<'static> {
    /// The groups a board's init loads on demand.
    pub fn of(board: &cairn_board::Board) -> Self {
        Self {
            networks: board.network_modules(),
            netfilter: board.netfilter_modules(),
            efi: board.efi_modules(),
            late: board.late_modules(),
        }
    }
}

impl OnDemand {
    /// Resolve the groups by module name against the boot modules `loaded`
    /// (see [`resolve_later`]); a module two groups need goes to the first.
    pub fn resolve(mod_dir: &Path, version: &str, loaded: &[PathBuf], wanted: Wanted<'_>) -> Result<Self> {
        let mut before: Vec<PathBuf> = loaded.to_vec();
        let mut group = |names: &[&str]| -> Result<Vec<PathBuf>> {
            let g = resolve_later(mod_dir, version, &before, names)?;
            before.extend(g.iter().cloned());
            Ok(g)
        };
        let networks = group(wanted.networks)?;
        let netfilter = group(wanted.netfilter)?;
        let efi = group(wanted.efi)?;
        let late = group(wanted.late)?;
        Ok(Self { networks, netfilter, efi, late })
    }

    /// Every module of every group.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.networks.iter().chain(&self.netfilter).chain(&self.efi).chain(&self.late)
    }
}

/// A load order cut into groups that share no module dependency, so the
/// init may load different groups at once: each group keeps the load
/// order, and the groups come in the order of their first module.
/// `modules` are (file name, file bytes) in load order. A dependency on a
/// module not in the list (built in, or loaded before) joins nothing. A
/// file whose `.modinfo` cannot be read makes the whole list one group:
/// the order alone is then all that is known.
pub fn independent_groups(modules: &[(&str, &[u8])]) -> Vec<Vec<usize>> {
    let stem = |f: &str| normalise(f.strip_suffix(".ko").unwrap_or(f));
    let index: HashMap<String, usize> = modules.iter().enumerate().map(|(i, (f, _))| (stem(f), i)).collect();
    // Union-find over positions; the root of a set is its smallest position.
    let mut parent: Vec<usize> = (0..modules.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, (_, bytes)) in modules.iter().enumerate() {
        let Ok(modinfo) = elf_section(bytes, ".modinfo") else {
            return if modules.is_empty() { Vec::new() } else { vec![(0..modules.len()).collect()] };
        };
        for dep in modinfo_depends(modinfo) {
            if let Some(&j) = index.get(&dep) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    // Each set under its root, which is its first member: the groups come
    // in the order of their first modules.
    let mut by_root: Vec<Vec<usize>> = vec![Vec::new(); modules.len()];
    for i in 0..modules.len() {
        let r = root(&mut parent, i);
        by_root[r].push(i);
    }
    by_root.into_iter().filter(|g| !g.is_empty()).collect()
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
                .map_err(io(&dir))?
                .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?.is_dir()))))
                .collect::<std::io::Result<_>>()
                .map_err(io(&dir))?;
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
            let text = fs::read_to_string(&builtin).map_err(io(&builtin))?;
            idx.builtin = parse_modules_builtin(&text);
        }
        Ok(idx)
    }

    fn path(&self, name: &str, version: &str) -> Result<PathBuf> {
        match self.files.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(many) if many.len() > 1 => Err(KmodError::Module(format!(
                "kernel {version} has {} files for module {name}: {}",
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ))),
            _ => Err(KmodError::Module(self.missing(name, version, None))),
        }
    }

    fn missing(&self, name: &str, version: &str, needed_by: Option<&str>) -> String {
        let by = needed_by.map(|p| format!(" (needed by {p})")).unwrap_or_default();
        match self.compressed.get(name) {
            Some(p) => format!(
                "kernel module {name}{by} of kernel {version} is compressed ({}); only plain .ko files are supported",
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
                return Err(KmodError::Module(format!("kernel module dependency cycle: {}", cycle.join(" -> "))));
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
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], &'static str> {
    let u16_at = |off: usize| -> Result<u16, &'static str> {
        let b = elf.get(off..off + 2).ok_or("ELF file truncated")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| -> Result<u32, &'static str> {
        let b = elf.get(off..off + 4).ok_or("ELF file truncated")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| -> Result<u64, &'static str> {
        let b = elf.get(off..off + 8).ok_or("ELF file truncated")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    let usize_of = |v: u64| usize::try_from(v).map_err(|_| "ELF offset out of range");

    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian 64-bit ELF file");
    }
    let shoff = usize_of(u64_at(0x28)?)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    if shoff == 0 || shentsize < 64 {
        return Err("ELF file has no usable section headers");
    }
    let header = |i: usize| -> Result<usize, &'static str> {
        let off = i.checked_mul(shentsize).and_then(|o| o.checked_add(shoff)).ok_or("ELF section index overflow")?;
        elf.get(off..off + 64).ok_or("ELF section header out of bounds")?;
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
        shstrndx = usize::try_from(u32_at(header(0)? + 40)?).map_err(|_| "ELF index out of range")?;
    }
    let contents = |i: usize| -> Result<&'a [u8], &'static str> {
        let h = header(i)?;
        let off = usize_of(u64_at(h + 24)?)?;
        let size = usize_of(u64_at(h + 32)?)?;
        off.checked_add(size).and_then(|end| elf.get(off..end)).ok_or("ELF section out of bounds")
    };
    let strtab = contents(shstrndx)?;
    for i in 0..shnum {
        let h = header(i)?;
        let name_off = usize::try_from(u32_at(h)?).map_err(|_| "ELF index out of range")?;
        let Some(rest) = strtab.get(name_off..) else {
            continue;
        };
        let sec_name = rest.split(|&b| b == 0).next().unwrap_or_default();
        if sec_name == name.as_bytes() {
            return contents(i);
        }
    }
    let _ = name;
    Err("ELF file has no such section (kernel modules have .modinfo)")
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
    fn reads_depends_from_synthetic_module() -> Result<(), Box<dyn std::error::Error>> {
        let ko = synthetic_ko(b"license=GPL\0depends=virtio_ring,dm-mod,virtio\0\0\0name=virtio_pci\0vermagic=6.1.0\0");
        let modinfo = elf_section(&ko, ".modinfo")?;
        assert_eq!(modinfo_depends(modinfo), names(&["virtio_ring", "dm_mod", "virtio"]));
        assert_eq!(elf_section(&ko, ".text")?, &[0x90u8; 8]);
        assert!(elf_section(&ko, ".nothere").is_err());
        Ok(())
    }

    #[test]
    fn empty_depends_means_no_dependencies() -> Result<(), Box<dyn std::error::Error>> {
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
    fn diamond_is_ordered_dependencies_first_each_once() -> Result<(), Box<dyn std::error::Error>> {
        // top -> left, right; left, right -> base
        let g = graph(&[("top", &["right", "left"]), ("left", &["base"]), ("right", &["base"]), ("base", &[])]);
        let order = load_order(&names(&["top", "left"]), |n| Ok(g[n].clone()))?;
        assert_eq!(order, names(&["base", "left", "right", "top"]));
        Ok(())
    }

    #[test]
    fn roots_keep_their_order_when_independent() -> Result<(), Box<dyn std::error::Error>> {
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
    fn modules_loaded_later_skip_what_boot_loaded() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let dir = d.path().join("kernel");
        fs::create_dir_all(&dir)?;
        for (name, deps) in
            [("libcrc32c", ""), ("bridge", "libcrc32c"), ("nf_conntrack", "libcrc32c"), ("nf_nat", "nf_conntrack")]
        {
            fs::write(
                dir.join(format!("{name}.ko")),
                synthetic_ko(format!("depends={deps}\0name={name}\0").as_bytes()),
            )?;
        }
        fs::write(d.path().join("modules.builtin"), "")?;
        let boot = resolve_modules(d.path(), "6.1.0", &["bridge"])?;
        let later = resolve_later(d.path(), "6.1.0", &boot, &["nf_nat"])?;
        let stem = |v: &[PathBuf]| -> Vec<String> {
            v.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(stem(&boot), ["libcrc32c", "bridge"]);
        assert_eq!(stem(&later), ["nf_conntrack", "nf_nat"], "libcrc32c is loaded at boot already");
        Ok(())
    }

    #[test]
    fn modules_sharing_no_dependency_are_independent_groups_in_load_order() {
        let ko = |deps: &str| synthetic_ko(format!("depends={deps}\0").as_bytes());
        let files = [
            ("virtio_ring.ko", ko("")),
            ("virtio.ko", ko("virtio_ring")),
            ("squashfs.ko", ko("")),
            ("dm-mod.ko", ko("")),
            ("virtio_blk.ko", ko("virtio,virtio_ring")),
            ("dm-verity.ko", ko("dm-mod,dm_bufio")),
            ("nls_utf8.ko", ko("crc32c_generic")),
            ("dm-bufio.ko", ko("")),
        ];
        let list: Vec<(&str, &[u8])> = files.iter().map(|(f, b)| (*f, b.as_slice())).collect();
        // dm-bufio comes after dm-verity here: it still joins its group
        // (and `depends=` names it with `_`, the file with `-`).
        assert_eq!(independent_groups(&list), [vec![0, 1, 4], vec![2], vec![3, 5, 7], vec![6]]);
        let mut unreadable = list.clone();
        unreadable[2].1 = b"not an ELF file";
        assert_eq!(independent_groups(&unreadable), [(0..8).collect::<Vec<_>>()], "the order alone: one group");
        assert!(independent_groups(&[]).is_empty());
    }

    #[test]
    fn builtin_list_and_names_are_normalised() {
        let b = parse_modules_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/md/dm-mod.ko\n\n");
        assert!(b.contains("ext4") && b.contains("dm_mod") && b.len() == 2);
        assert_eq!(normalise("dm-verity"), "dm_verity");
    }
}
