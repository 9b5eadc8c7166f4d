//! The initramfs of a boot slot: `/init` (cairn-init), `/bin/cairn-ctl`
//! (when built beside cairn-init), the device nodes the
//! kernel needs before devtmpfs, mount points, the modules in load order,
//! and the device's trust data (`/etc/cairn/trusted-keys`,
//! `/etc/cairn/product`; formats in `cairn_format::trust`).
//!
//! The trust data is what makes one `cairn-init` binary serve every
//! product: the init holds no key and no product string, it reads them from
//! here. Their integrity is the slot's: with Secure Boot the signed unified
//! kernel image holding this initramfs covers them.
//!
//! The output is byte-reproducible: a gzip'd newc archive with fixed
//! metadata (see `cpio`), entries in a fixed order.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use cairn_format::envelope::PublicKey;
use cairn_format::trust::{self, TrustError, DEVELOPMENT_PATH, PRODUCT_PATH, TRUSTED_KEYS_PATH};

use crate::cpio::{self, CpioBuilder};
use crate::kmod::OnDemand;

/// What a device trusts: written into its initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Public keys whose manifest signatures the device accepts (1 to
    /// `cairn_format::trust::MAX_TRUSTED_KEYS`, no key twice).
    pub keys: Vec<PublicKey>,
    /// The product's compatibility string: a manifest's `compatible` must
    /// equal it.
    pub product: String,
    /// A development build ([`DEVELOPMENT_PATH`]): the device honours
    /// development switches (`cairn.console=ctl`). Never for a product.
    pub development: bool,
}

impl Trust {
    /// Trust data, checked by the rules the device reads it with.
    pub fn new(keys: Vec<PublicKey>, product: impl Into<String>) -> Result<Self, InitramfsError> {
        let t = Self { keys, product: product.into(), development: false };
        t.files()?;
        Ok(t)
    }

    /// The two files' contents: (trusted-keys, product).
    fn files(&self) -> Result<(String, String), InitramfsError> {
        let keys = trust::render_trusted_keys(&self.keys).map_err(|e| InitramfsError::Trust(TRUSTED_KEYS_PATH, e))?;
        let product = trust::render_product(&self.product).map_err(|e| InitramfsError::Trust(PRODUCT_PATH, e))?;
        Ok((keys, product))
    }
}

/// Why an initramfs could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The trust data breaks a rule (the file it would go to, why).
    #[error("{0}: {1}")]
    Trust(&'static str, TrustError),
    /// Reading an input or writing the output.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Reading back an initramfs that is not a gzip'd newc archive.
    #[error("not a gzip'd newc cpio archive: {0}")]
    Format(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |error| InitramfsError::Io { path: path.to_owned(), error }
}

/// The initramfs bytes (gzip'd newc cpio) for `init_binary`, `modules`
/// (loaded in this order) and `trust`.
pub fn build(init_binary: &Path, modules: &[PathBuf], trust: &Trust) -> Result<Vec<u8>, InitramfsError> {
    archive(init_binary, modules, &OnDemand::default(), Some(trust))
}

/// [`build`] with the modules loaded on demand too: in the initramfs,
/// listed in `lib/modules/load-order-networks` (which the init loads only
/// for a manifest with container networks) and
/// `lib/modules/load-order-netfilter` (only for a network with egress or a
/// published port).
pub fn build_with_on_demand(
    init_binary: &Path,
    modules: &[PathBuf],
    on_demand: &OnDemand,
    trust: &Trust,
) -> Result<Vec<u8>, InitramfsError> {
    archive(init_binary, modules, on_demand, Some(trust))
}

/// [`build_with_on_demand`], written to `out` as [`write`] does.
pub fn write_with_on_demand(
    init_binary: &Path,
    modules: &[PathBuf],
    on_demand: &OnDemand,
    trust: &Trust,
    out: &Path,
) -> Result<(), InitramfsError> {
    write_bytes(&build_with_on_demand(init_binary, modules, on_demand, trust)?, out)
}

/// An initramfs without trust data: its device refuses every manifest
/// (`trust.invalid`). For tests of that refusal; never for a device.
pub fn build_without_trust(
    init_binary: &Path,
    modules: &[PathBuf],
    on_demand: &OnDemand,
) -> Result<Vec<u8>, InitramfsError> {
    archive(init_binary, modules, on_demand, None)
}

/// [`build`], written to `out` (through a temporary file beside it, so
/// `out` is never half written).
pub fn write(init_binary: &Path, modules: &[PathBuf], trust: &Trust, out: &Path) -> Result<(), InitramfsError> {
    write_bytes(&build(init_binary, modules, trust)?, out)
}

/// Write initramfs bytes to `out` through a temporary file beside it.
pub fn write_bytes(bytes: &[u8], out: &Path) -> Result<(), InitramfsError> {
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, out).map_err(io(out))
}

fn archive(
    init_binary: &Path,
    modules: &[PathBuf],
    on_demand: &OnDemand,
    trust: Option<&Trust>,
) -> Result<Vec<u8>, InitramfsError> {
    let trust_files = trust.map(Trust::files).transpose()?;
    let mut c = CpioBuilder::new();
    for d in ["dev", "proc", "sys", "run", "lib", "lib/modules"] {
        c.dir(d, 0o755);
    }
    c.char_device("dev/console", 0o600, 5, 1);
    c.char_device("dev/null", 0o666, 1, 3);
    let init = fs::read(init_binary).map_err(io(init_binary))?;
    c.file("init", 0o755, &init);
    // The control client, when it was built beside the init (xtask builds
    // both): PID 1 offers it to the containers granted control permissions.
    if let Some(ctl) = init_binary.parent().map(|d| d.join("cairn-ctl")).filter(|p| p.is_file()) {
        c.dir("bin", 0o755);
        c.file("bin/cairn-ctl", 0o755, &fs::read(&ctl).map_err(io(&ctl))?);
    }
    let lists = [
        ("load-order", modules),
        ("load-order-networks", on_demand.networks.as_slice()),
        ("load-order-netfilter", on_demand.netfilter.as_slice()),
        ("load-order-efi", on_demand.efi.as_slice()),
        ("load-order-late", on_demand.late.as_slice()),
    ];
    for (list, set) in lists {
        if set.is_empty() && list != "load-order" {
            continue;
        }
        let mut files = Vec::new();
        for m in set {
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let data = fs::read(m).map_err(io(m))?;
            c.file(&format!("lib/modules/{name}"), 0o644, &data);
            files.push((name, data));
        }
        c.file(&format!("lib/modules/{list}"), 0o644, load_order_text(&files).as_bytes());
    }
    if let Some((keys, product)) = trust_files {
        c.dir("etc", 0o755);
        c.dir("etc/cairn", 0o755);
        c.file(TRUSTED_KEYS_PATH, 0o644, keys.as_bytes());
        c.file(PRODUCT_PATH, 0o644, product.as_bytes());
        if trust.is_some_and(|t| t.development) {
            let text = "a development build: cairn.console=ctl is honoured; never ship it\n";
            c.file(DEVELOPMENT_PATH, 0o644, text.as_bytes());
        }
    }
    Ok(cpio::gzip(&c.finish()))
}

/// A load-order list: one file name a line, in load order, and an empty
/// line between groups that share no dependency (the init loads such
/// groups at once, each in order; see [`kmod::independent_groups`]).
fn load_order_text(files: &[(String, Vec<u8>)]) -> String {
    let list: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let groups = crate::kmod::independent_groups(&list);
    let mut text = String::new();
    for (k, group) in groups.iter().enumerate() {
        if k > 0 {
            text.push('\n');
        }
        for &i in group {
            text.push_str(files.get(i).map_or("", |(n, _)| n.as_str()));
            text.push('\n');
        }
    }
    text
}

/// The regular files of an initramfs (gzip'd newc), by path without the
/// leading `/`. Reads what [`build`] writes (for `image inspect`-like tools
/// and tests); directories, devices and symlinks are skipped.
pub fn files(initramfs: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, InitramfsError> {
    let bad = |what: &str| InitramfsError::Format(what.to_owned());
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(initramfs).read_to_end(&mut all).map_err(|e| bad(&e.to_string()))?;
    let mut out = BTreeMap::new();
    let mut at = 0usize;
    loop {
        let h = all.get(at..at + 110).ok_or_else(|| bad("truncated header"))?;
        if h.get(..6) != Some(b"070701".as_slice()) {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> Result<usize, InitramfsError> {
            let s =
                h.get(6 + i * 8..14 + i * 8).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| bad("header"))?;
            usize::from_str_radix(s, 16).map_err(|_| bad("header field not hex"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        let name_at = at + 110;
        let name = all.get(name_at..(name_at + namesize).saturating_sub(1)).ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let data_at = (name_at + namesize).next_multiple_of(4);
        let data = all.get(data_at..data_at + size).ok_or_else(|| bad("truncated data"))?;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        if mode & 0o170000 == 0o100000 {
            out.insert(name, data.to_vec());
        }
        at = (data_at + size).next_multiple_of(4);
    }
}

/// The trust data in an initramfs, parsed as the device parses it; `None`
/// when it holds neither file.
pub fn read_trust(initramfs: &[u8]) -> Result<Option<Trust>, InitramfsError> {
    let f = files(initramfs)?;
    let at = |p: &'static str| f.get(p.trim_start_matches('/'));
    let (Some(keys), Some(product)) = (at(TRUSTED_KEYS_PATH), at(PRODUCT_PATH)) else {
        return match (at(TRUSTED_KEYS_PATH), at(PRODUCT_PATH)) {
            (None, None) => Ok(None),
            (None, _) => Err(InitramfsError::Trust(TRUSTED_KEYS_PATH, TrustError::NoKeys)),
            _ => Err(InitramfsError::Trust(PRODUCT_PATH, TrustError::BadProduct(String::new()))),
        };
    };
    let keys = trust::parse_trusted_keys(keys).map_err(|e| InitramfsError::Trust(TRUSTED_KEYS_PATH, e))?;
    let product = trust::parse_product(product).map_err(|e| InitramfsError::Trust(PRODUCT_PATH, e))?;
    Ok(Some(Trust { keys, product, development: at(DEVELOPMENT_PATH).is_some() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes()
    }

    fn inputs(d: &Path) -> (PathBuf, Vec<PathBuf>) {
        fs::write(d.join("init"), b"\x7fELF init").unwrap();
        fs::write(d.join("virtio_blk.ko"), b"mod1").unwrap();
        fs::write(d.join("dm-verity.ko"), b"mod2").unwrap();
        (d.join("init"), vec![d.join("virtio_blk.ko"), d.join("dm-verity.ko")])
    }

    #[test]
    fn the_initramfs_holds_init_modules_and_trust_data() {
        let d = tempfile::tempdir().unwrap();
        let (init, modules) = inputs(d.path());
        let trust = Trust::new(vec![key(1), key(2)], "cairn-qemu-dev").unwrap();
        let bytes = build(&init, &modules, &trust).unwrap();
        let f = files(&bytes).unwrap();
        assert_eq!(f["init"], b"\x7fELF init");
        assert_eq!(f["lib/modules/virtio_blk.ko"], b"mod1");
        assert_eq!(f["lib/modules/load-order"], b"virtio_blk.ko\ndm-verity.ko\n");
        assert_eq!(f["etc/cairn/product"], b"cairn-qemu-dev\n");
        let keys = String::from_utf8(f["etc/cairn/trusted-keys"].clone()).unwrap();
        assert_eq!(keys.lines().count(), 2);
        assert_eq!(read_trust(&bytes).unwrap(), Some(trust.clone()));
        assert!(!f.contains_key("etc/cairn/development"), "a product build is no development build");
        let dev = Trust { development: true, ..trust.clone() };
        let bytes = build(&init, &modules, &dev).unwrap();
        assert!(files(&bytes).unwrap().contains_key("etc/cairn/development"));
        assert_eq!(read_trust(&bytes).unwrap(), Some(dev));
        assert!(!f.contains_key("lib/modules/load-order-netfilter"), "no netfilter list without its modules");
        assert!(!f.contains_key("lib/modules/load-order-networks"), "no networks list without its modules");
        // The modules loaded on demand: in the archive, in lists of their own.
        fs::write(d.path().join("nf_tables.ko"), b"mod3").unwrap();
        fs::write(d.path().join("bridge.ko"), b"mod4").unwrap();
        fs::write(d.path().join("efivarfs.ko"), b"mod5").unwrap();
        fs::write(d.path().join("vfat.ko"), b"mod6").unwrap();
        let on_demand = OnDemand {
            networks: vec![d.path().join("bridge.ko")],
            netfilter: vec![d.path().join("nf_tables.ko")],
            efi: vec![d.path().join("efivarfs.ko")],
            late: vec![d.path().join("vfat.ko")],
        };
        let f = files(&build_with_on_demand(&init, &modules, &on_demand, &trust).unwrap()).unwrap();
        assert_eq!(f["lib/modules/load-order"], b"virtio_blk.ko\ndm-verity.ko\n");
        assert_eq!(f["lib/modules/load-order-netfilter"], b"nf_tables.ko\n");
        assert_eq!(f["lib/modules/load-order-networks"], b"bridge.ko\n");
        assert_eq!(f["lib/modules/nf_tables.ko"], b"mod3");
        assert_eq!(f["lib/modules/bridge.ko"], b"mod4");
        assert_eq!(f["lib/modules/load-order-efi"], b"efivarfs.ko\n");
        assert_eq!(f["lib/modules/load-order-late"], b"vfat.ko\n");
        assert_eq!(f["lib/modules/vfat.ko"], b"mod6");
    }

    #[test]
    fn the_output_is_byte_reproducible_and_depends_on_the_trust_data() {
        let d = tempfile::tempdir().unwrap();
        let (init, modules) = inputs(d.path());
        let trust = Trust::new(vec![key(1)], "p1").unwrap();
        let a = build(&init, &modules, &trust).unwrap();
        assert_eq!(a, build(&init, &modules, &trust).unwrap());
        let other_product = Trust::new(vec![key(1)], "p2").unwrap();
        assert_ne!(a, build(&init, &modules, &other_product).unwrap());
        let other_key = Trust::new(vec![key(2)], "p1").unwrap();
        assert_ne!(a, build(&init, &modules, &other_key).unwrap());
        let out = d.path().join("initramfs.cpio.gz");
        write(&init, &modules, &trust, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), a);
        assert!(!out.with_extension("tmp").exists());
    }

    #[test]
    fn without_trust_data_there_is_none_to_read() {
        let d = tempfile::tempdir().unwrap();
        let (init, modules) = inputs(d.path());
        let bytes = build_without_trust(&init, &modules, &OnDemand::default()).unwrap();
        let f = files(&bytes).unwrap();
        assert!(f.contains_key("init") && !f.keys().any(|k| k.starts_with("etc/")), "{:?}", f.keys());
        assert_eq!(read_trust(&bytes).unwrap(), None);
    }

    #[test]
    fn trust_data_the_device_would_refuse_is_not_written() {
        let e = Trust::new(vec![], "p").unwrap_err().to_string();
        assert_eq!(e, "/etc/cairn/trusted-keys: no key");
        let e = Trust::new(vec![key(1), key(1)], "p").unwrap_err().to_string();
        assert_eq!(e, "/etc/cairn/trusted-keys: line 2: the same key twice");
        let e = Trust::new(vec![key(1)], "has space").unwrap_err().to_string();
        assert!(e.starts_with("/etc/cairn/product: product \"has space\""), "{e}");
        // A struct built by hand is checked when written.
        let d = tempfile::tempdir().unwrap();
        let (init, modules) = inputs(d.path());
        let bad = Trust { keys: vec![key(1)], product: String::new(), development: false };
        assert!(matches!(build(&init, &modules, &bad), Err(InitramfsError::Trust(PRODUCT_PATH, _))));
    }

    #[test]
    fn a_missing_input_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let trust = Trust::new(vec![key(1)], "p").unwrap();
        let e = build(&d.path().join("nope"), &[], &trust).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
    }
}
