//! Sizes: cairn's init (stripped), initramfs and demo disk beside Debian's
//! `tini-static`, `crun` and `runc` of the same release, each with the
//! shared libraries it loads (followed through `readelf`, transitively).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_qemu_tests::Artifacts;

use super::report::{Group, Row};
use crate::host_deps::{self, Deb};

/// The `NEEDED` sonames and the program interpreter's file name, from
/// `readelf -d -l` output.
pub fn parse_readelf(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.contains("(NEEDED)") {
            if let Some(name) = line.split('[').nth(1).and_then(|r| r.split(']').next()) {
                out.push(name.to_owned());
            }
        } else if let Some(rest) = line.split("program interpreter: ").nth(1) {
            let path = rest.trim_end_matches(']').trim();
            out.push(path.rsplit('/').next().unwrap_or(path).to_owned());
        }
    }
    out
}

/// A file called `name` under the lib directories of the trees, with
/// symlinks followed inside its tree.
fn find_lib(trees: &[PathBuf], name: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                if let Some(f) = walk(&p, name) {
                    return Some(f);
                }
            } else if e.file_name().to_string_lossy() == name {
                return Some(p);
            }
        }
        None
    }
    trees.iter().find_map(|t| {
        ["lib", "lib64", "usr/lib"].iter().find_map(|d| {
            let mut p = walk(&t.join(d), name)?;
            for _ in 0..8 {
                let Ok(target) = std::fs::read_link(&p) else { break };
                p = if target.is_absolute() {
                    t.join(target.strip_prefix("/").unwrap_or(&target))
                } else {
                    p.parent().map_or(target.clone(), |d| d.join(&target))
                };
            }
            p.is_file().then_some(p)
        })
    })
}

/// The binary's size plus every library it loads, transitively (bytes), and
/// the library names.
fn with_libs(bin: &Path, trees: &[PathBuf]) -> Result<(u64, Vec<String>)> {
    let mut total = size(bin);
    let mut seen = BTreeSet::new();
    let mut todo = vec![bin.to_path_buf()];
    while let Some(f) = todo.pop() {
        let out = host_deps::run(Command::new("readelf").args(["-d", "-l", "-W"]).arg(&f))
            .with_context(|| format!("readelf of {}", f.display()))?;
        for name in parse_readelf(&String::from_utf8_lossy(&out.stdout)) {
            if !seen.insert(name.clone()) {
                continue;
            }
            let lib =
                find_lib(trees, &name).with_context(|| format!("{name} (needed by {}) not found", f.display()))?;
            total += size(&lib);
            todo.push(lib);
        }
    }
    Ok((total, seen.into_iter().collect()))
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

/// The sizes group of a board (one sample per row, KiB).
pub fn sizes(b: &'static Board, art: &Artifacts, debs: &[Deb]) -> Result<Group> {
    let tini = host_deps::fetch_debs(&["tini"], b.deb_arch, &crate::build_dir().join("debs"))?;
    let trees: Vec<PathBuf> = debs.iter().map(|d| d.tree.clone()).collect();
    let deb = |name: &str| debs.iter().chain(tini.iter()).find(|d| d.package == name);
    let bin = |pkg: &str, name: &str| -> Option<PathBuf> {
        let d = deb(pkg)?;
        ["usr/bin", "usr/sbin", "bin"].iter().map(|x| d.tree.join(x).join(name)).find(|p| p.is_file())
    };
    let mut rows = vec![
        Row::new("cairn-init (stripped, static)", vec![kib(size(&art.init))]),
        Row::new("cairn initramfs (init + modules)", vec![kib(size(&art.boot.initramfs))]),
    ];
    let mut notes = vec![];
    let demo = crate::build_dir().join(b.name).join("demo/disk.img");
    if demo.is_file() {
        rows.push(Row::new("demo disk image (apparent)", vec![kib(size(&demo))]));
        let allocated = std::fs::metadata(&demo).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
        rows.push(Row::new("demo disk image (allocated)", vec![kib(allocated)]));
    }
    if let Some(t) = bin("tini", "tini-static") {
        rows.push(Row::new("tini-static", vec![kib(size(&t))]));
    }
    for (pkg, name) in [("crun", "crun"), ("runc", "runc")] {
        let Some(p) = bin(pkg, name) else { continue };
        rows.push(Row::new(name, vec![kib(size(&p))]));
        let (total, libs) = with_libs(&p, &trees)?;
        rows.push(Row::new(&format!("{name} + libraries"), vec![kib(total)]));
        notes.push(format!("{name} loads {}", libs.join(" ")));
    }
    if let Some(p) = bin("busybox-static", "busybox") {
        rows.push(Row::new("busybox-static (for scale)", vec![kib(size(&p))]));
    }
    notes.push(format!(
        "Debian packages: {}",
        debs.iter()
            .chain(tini.iter())
            .filter(|d| ["crun", "runc", "tini"].contains(&d.package.as_str()))
            .map(|d| d.file.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if b.rust_target.starts_with("x86_64") {
        notes.push(format!(
            "goal: cairn-init under 768 KiB stripped on x86_64; measured {:.0} KiB",
            kib(size(&art.init))
        ));
    }
    Ok(Group {
        name: "sizes".into(),
        title: "bytes on the device, in KiB".into(),
        unit: "KiB".into(),
        rows,
        subject: None,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readelf_needed_and_interpreter() {
        let text = "\
      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]
 0x0000000000000001 (NEEDED)             Shared library: [libsystemd.so.0]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [libcap.so.2]
";
        assert_eq!(parse_readelf(text), ["ld-linux-x86-64.so.2", "libsystemd.so.0", "libc.so.6"]);
        assert!(parse_readelf("static binary\n").is_empty());
    }
}
