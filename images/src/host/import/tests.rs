//! Tests of the importer: archives are built here with the `tar` crate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::{Builder, EntryType, Header};

use super::*;
use crate::host::layer::{self, LayerOptions};
use crate::host::squashfs;
use crate::host::tree::{FileData, Inode, Kind, Tree};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn some<T>(o: Option<T>, what: &str) -> T {
    o.unwrap_or_else(|| panic!("{what}: missing"))
}

/// Builds tar archives member by member, with raw names (so hostile ones
/// can be written too).
struct Tb(Builder<Vec<u8>>);

impl Tb {
    fn new() -> Self {
        Tb(Builder::new(Vec::new()))
    }

    fn raw(&mut self, name: &[u8], ty: EntryType, mode: u32, owner: u64, link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        ok(self.0.append(&h, data));
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, 0o755, 0, b"", b"")
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, 0o644, 0, b"", data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Symlink, 0o777, 0, target.as_bytes(), b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Link, 0o644, 0, target.as_bytes(), b"")
    }

    fn device(&mut self, name: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Header::new_gnu();
        ok(h.set_path(name));
        h.set_entry_type(ty);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        ok(h.set_device_major(major));
        ok(h.set_device_minor(minor));
        h.set_cksum();
        ok(self.0.append(&h, &b""[..]));
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        ok(self.0.append_pax_extensions(records.iter().copied()));
        self
    }

    fn finish(self) -> Vec<u8> {
        ok(self.0.into_inner())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    ok(e.write_all(data));
    ok(e.finish())
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    ok(fs::write(&p, data));
    p
}

fn import_bytes(data: &[u8], opts: &ImportOptions) -> Result<Vec<ImportedLayer>, ImportError> {
    let dir = ok(tempfile::tempdir());
    import(&write(dir.path(), "src", data), opts)
}

fn one(data: &[u8]) -> Tree {
    let mut layers = ok(import_bytes(data, &ImportOptions::default()));
    assert_eq!(layers.len(), 1);
    layers.remove(0).tree
}

fn node<'t>(t: &'t Tree, path: &str) -> &'t Inode {
    let id = some(ok(t.lookup(path.as_bytes())), path);
    t.inode(id)
}

fn has(t: &Tree, path: &str) -> bool {
    matches!(t.lookup(path.as_bytes()), Ok(Some(_)))
}

fn contents(t: &Tree, path: &str) -> Vec<u8> {
    let Kind::File(FileData::Spool { offset, len }) = node(t, path).kind else { panic!("{path}: not a spooled file") };
    let mut buf = vec![0u8; len as usize];
    ok(some(t.spool.as_ref(), "spool").read_exact_at(&mut buf, offset));
    buf
}

fn names(t: &Tree, path: &str) -> Vec<String> {
    let id = some(ok(t.lookup(path.as_bytes())), path);
    t.entries(id).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect()
}

/// Digest of the squashfs image of `t`.
fn image_digest(t: &Tree) -> [u8; 32] {
    let dir = ok(tempfile::tempdir());
    ok(squashfs::write_layer(t, &dir.path().join("l.squashfs"))).digest
}

fn rootfs_tar() -> Vec<u8> {
    let mut b = Tb::new();
    b.raw(b"./", EntryType::Directory, 0o700, 0, b"", b"");
    b.dir("./etc/");
    b.file("./etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    b.pax(&[("SCHILY.xattr.user.note", b"hello"), ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0xff])]);
    b.raw(b"./bin/su", EntryType::Regular, 0o4755, 1000, b"", b"binary");
    b.file("./bin/ping", b"ping");
    b.symlink("./bin/sh", "/bin/busybox");
    b.symlink("./bin/passwd", "../etc/passwd");
    b.hardlink("./bin/su2", "./bin/su");
    b.device("./dev/null", EntryType::Char, 1, 3);
    b.device("./dev/sda", EntryType::Block, 8, 0);
    b.raw(b"./run/fifo", EntryType::Fifo, 0o600, 0, b"", b"");
    b.file("usr/lib/deep/file", b"deep");
    b.raw(b"usr/lib", EntryType::Directory, 0o750, 7, b"", b"");
    b.file("etc/.wh.literal", b"");
    let long = format!("opt/{}/{}", "a".repeat(120), "b".repeat(100));
    let mut h = Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    ok(b.0.append_data(&mut h, &long, &b"long"[..]));
    b.finish()
}

#[test]
fn rootfs_tar_keeps_every_kind() {
    let t = one(&rootfs_tar());
    assert_eq!(t.inode(crate::host::tree::ROOT).meta.mode, 0o700);
    assert_eq!(contents(&t, "etc/passwd"), b"root:x:0:0::/root:/bin/sh\n");
    let su = node(&t, "bin/su");
    assert_eq!((su.meta.mode, su.meta.uid, su.meta.gid), (0o4755, 1000, 1000));
    assert_eq!(su.meta.xattrs.get(&b"user.note"[..]).map(Vec::as_slice), Some(&b"hello"[..]));
    assert_eq!(su.meta.xattrs.get(&b"security.capability"[..]).map(Vec::as_slice), Some(&[1u8, 0, 0, 2, 0xff][..]));
    assert!(node(&t, "bin/ping").meta.xattrs.is_empty(), "PAX records belong to one member");
    assert_eq!(node(&t, "bin/sh").kind, Kind::Symlink(b"/bin/busybox".to_vec()));
    assert_eq!(node(&t, "bin/passwd").kind, Kind::Symlink(b"../etc/passwd".to_vec()));
    assert_eq!(t.lookup(b"bin/su2"), t.lookup(b"bin/su"), "a hard link is the same inode");
    assert_eq!(contents(&t, "bin/su2"), b"binary");
    assert_eq!(node(&t, "dev/null").kind, Kind::CharDevice { major: 1, minor: 3 });
    assert_eq!(node(&t, "dev/sda").kind, Kind::BlockDevice { major: 8, minor: 0 });
    assert_eq!(node(&t, "dev").meta.mode, 0o755, "missing parents are created");
    assert_eq!(node(&t, "run/fifo").kind, Kind::Fifo);
    // A later entry for an implicit directory sets its metadata, keeps children.
    assert_eq!((node(&t, "usr/lib").meta.mode, node(&t, "usr/lib").meta.uid), (0o750, 7));
    assert_eq!(contents(&t, "usr/lib/deep/file"), b"deep");
    assert!(matches!(node(&t, "etc/.wh.literal").kind, Kind::File(_)), "a rootfs tar is taken literally");
    let long = format!("opt/{}/{}", "a".repeat(120), "b".repeat(100));
    assert_eq!(contents(&t, &long), b"long");
    // It writes.
    image_digest(&t);
}

#[test]
fn gzip_and_zstd_give_the_same_tree() {
    let plain = rootfs_tar();
    let want = image_digest(&one(&plain));
    assert_eq!(image_digest(&one(&gzip(&plain))), want);
    assert_eq!(image_digest(&one(&zstd(&plain))), want);
    // Two gzip members and two zstd frames are one stream.
    let (a, b) = plain.split_at(1000);
    assert_eq!(image_digest(&one(&[gzip(a), gzip(b)].concat())), want);
    assert_eq!(image_digest(&one(&[zstd(a), zstd(b)].concat())), want);
}

#[test]
fn zstd_cli_stream_with_checksum() {
    let dir = ok(tempfile::tempdir());
    let tar = write(dir.path(), "r.tar", &rootfs_tar());
    let made = std::process::Command::new("zstd").arg("-q").arg("--check").arg(&tar).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("zstd CLI not available; skipped");
        return;
    }
    let zst = ok(fs::read(dir.path().join("r.tar.zst")));
    assert_eq!(image_digest(&one(&zst)), image_digest(&one(&rootfs_tar())));
    // Flip a byte of the content checksum (the last 4 bytes).
    let mut bad = zst.clone();
    let n = bad.len();
    bad[n - 2] ^= 0xff;
    assert!(matches!(import_bytes(&bad, &ImportOptions::default()), Err(ImportError::Corrupt { format: "zstd", .. })));
}

#[test]
fn corrupt_and_truncated_compressed_streams() {
    let gz = gzip(&rootfs_tar());
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    bad[mid + 1] ^= 0x55;
    let e = import_bytes(&bad, &ImportOptions::default());
    assert!(
        matches!(e, Err(ImportError::Corrupt { format: "gzip", .. }) | Err(ImportError::Malformed { .. })),
        "{e:?}"
    );
    // A bad CRC at the very end is noticed too.
    let mut crc = gz.clone();
    let n = crc.len();
    crc[n - 6] ^= 1;
    assert!(matches!(import_bytes(&crc, &ImportOptions::default()), Err(ImportError::Corrupt { format: "gzip", .. })));
    let e = import_bytes(&gz[..gz.len() - 20], &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::TruncatedArchive { .. })), "{e:?}");
    let zst = zstd(&rootfs_tar());
    let e = import_bytes(&zst[..zst.len() / 2], &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::Corrupt { .. }) | Err(ImportError::TruncatedArchive { .. })), "{e:?}");
    let e = import_bytes(b"\xfd7zXZ\0 not really", &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::UnsupportedCompression { format: "xz", .. })), "{e:?}");
    let e = import_bytes(b"hello, world", &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::NotAnArchive { .. })), "{e:?}");
}

#[test]
fn truncated_archives_and_members() {
    let tar = rootfs_tar();
    // Cut inside the data of the first file: a truncated member.
    let mut b = Tb::new();
    b.file("a", &[7u8; 5000]);
    let full = b.finish();
    let e = import_bytes(&full[..512 + 2048], &ImportOptions::default());
    assert!(matches!(&e, Err(ImportError::TruncatedMember { member, .. }) if member == "a"), "{e:?}");
    // Cut inside a header.
    let e = import_bytes(&tar[..512 * 3 + 100], &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::TruncatedArchive { .. })), "{e:?}");
    // Cut exactly at a member boundary: no end-of-archive block.
    let mut b = Tb::new();
    b.file("a", b"x").file("b", b"y");
    let full = b.finish();
    let e = import_bytes(&full[..1024], &ImportOptions::default());
    assert!(matches!(&e, Err(ImportError::TruncatedArchive { after: Some(a), .. }) if a == "a"), "{e:?}");
    // A corrupted header checksum.
    let mut bad = full.clone();
    bad[1024 + 10] ^= 1;
    let e = import_bytes(&bad, &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::Malformed { .. })), "{e:?}");
}

fn err_of(b: Tb) -> ImportError {
    match import_bytes(&b.finish(), &ImportOptions::default()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

#[test]
fn hostile_members_are_refused() {
    let mut b = Tb::new();
    b.file("etc/../../x", b"");
    assert!(matches!(err_of(b), ImportError::BadPath { member, .. } if member == "etc/../../x"));
    let mut b = Tb::new();
    b.file("/etc/passwd", b"");
    assert!(matches!(err_of(b), ImportError::BadPath { .. }));
    let mut b = Tb::new();
    b.hardlink("a", "missing");
    assert!(matches!(err_of(b), ImportError::HardLink { reason: "target missing", .. }));
    let mut b = Tb::new();
    b.file("a", b"").hardlink("b", "../a");
    assert!(matches!(err_of(b), ImportError::HardLink { reason: "target outside the archive", .. }));
    let mut b = Tb::new();
    b.file("a", b"").hardlink("b", "/a");
    assert!(matches!(err_of(b), ImportError::HardLink { reason: "target outside the archive", .. }));
    let mut b = Tb::new();
    b.dir("d").hardlink("b", "d");
    assert!(matches!(err_of(b), ImportError::HardLink { reason: "target is a directory", .. }));
    let mut b = Tb::new();
    b.symlink("a/b/link", "../../../etc");
    assert!(matches!(err_of(b), ImportError::SymlinkEscapes { member, .. } if member == "a/b/link"));
    let mut b = Tb::new();
    b.symlink("a/b/link", "../../etc").symlink("a/abs", "/../../etc");
    assert!(import_bytes(&b.finish(), &ImportOptions::default()).is_ok(), "staying inside, or absolute, is fine");
    let mut b = Tb::new();
    b.file("f", b"").file("f/x", b"");
    assert!(matches!(err_of(b), ImportError::ParentNotDirectory { parent, .. } if parent == "f"));
    let mut b = Tb::new();
    b.symlink("l", "/etc").file("l/x", b"");
    assert!(matches!(err_of(b), ImportError::ParentNotDirectory { .. }));
    let mut b = Tb::new();
    b.file("a/x", b"").file("a", b"");
    assert!(matches!(err_of(b), ImportError::NotADirectory { .. }));
    let mut b = Tb::new();
    b.file("a", b"1").file("./a", b"2");
    assert!(matches!(err_of(b), ImportError::Duplicate { member, .. } if member == "./a"));
    let mut b = Tb::new();
    b.dir("d").dir("d/");
    assert!(matches!(err_of(b), ImportError::Duplicate { .. }));
    let mut b = Tb::new();
    b.dir(".").dir("./");
    assert!(matches!(err_of(b), ImportError::Duplicate { .. }));
    let mut b = Tb::new();
    b.pax(&[("SCHILY.xattr.system.posix_acl_access", b"x")]).file("a", b"");
    assert!(matches!(err_of(b), ImportError::Xattr { name, .. } if name == "system.posix_acl_access"));
    let mut b = Tb::new();
    b.pax(&[("SCHILY.acl.access", b"user::rwx")]).file("a", b"");
    assert!(matches!(err_of(b), ImportError::Xattr { .. }));
    let mut b = Tb::new();
    let mut h = Header::new_gnu();
    ok(h.set_path("sparse"));
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    some(h.as_gnu_mut(), "gnu header").realsize.copy_from_slice(b"00000000000\0");
    h.set_cksum();
    ok(b.0.append(&h, &b""[..]));
    let e = err_of(b);
    assert!(matches!(e, ImportError::Unsupported { .. }), "{e:?}");
    let mut b = Tb::new();
    b.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]).file("sparse", b"");
    assert!(matches!(err_of(b), ImportError::Unsupported { .. }));
    let mut b = Tb::new();
    b.raw(b"vol", EntryType::new(b'V'), 0o644, 0, b"", b"");
    let e = err_of(b);
    assert!(matches!(e, ImportError::Unsupported { .. }), "{e:?}");
    let mut b = Tb::new();
    b.raw(b"big", EntryType::Regular, 0o644, 1 << 33, b"", b"");
    let e = err_of(b);
    assert!(matches!(e, ImportError::Unsupported { .. } | ImportError::Malformed { .. }), "{e:?}");
}

#[test]
fn max_bytes_counts_every_file() {
    let mut b = Tb::new();
    b.file("a", &[1u8; 600]).file("b", &[2u8; 600]);
    let tar = b.finish();
    let e = import_bytes(&tar, &ImportOptions { max_bytes: Some(1000), ..Default::default() });
    assert!(matches!(&e, Err(ImportError::TooLarge { member, max: 1000, .. }) if member == "b"), "{e:?}");
    assert!(import_bytes(&tar, &ImportOptions { max_bytes: Some(1200), ..Default::default() }).is_ok());
}

// ---- images ----

/// A layer to put in a test image: its media type and bytes as stored,
/// and the uncompressed tar.
struct TestLayer {
    media: &'static str,
    stored: Vec<u8>,
    tar: Vec<u8>,
}

fn plain_layer(tar: Vec<u8>) -> TestLayer {
    TestLayer { media: "application/vnd.oci.image.layer.v1.tar", stored: tar.clone(), tar }
}

fn gzip_layer(tar: Vec<u8>) -> TestLayer {
    TestLayer { media: "application/vnd.oci.image.layer.v1.tar+gzip", stored: gzip(&tar), tar }
}

/// Write a blob into the layout at `dir`; its descriptor fields.
fn put_blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let d = dir.join("blobs/sha256");
    ok(fs::create_dir_all(&d));
    let h = sha(data);
    ok(fs::write(d.join(&h), data));
    (format!("sha256:{h}"), data.len())
}

/// Write an image (config, layers, manifest) into the layout `dir`; the
/// manifest's descriptor.
fn put_image(dir: &Path, layers: &[TestLayer], arch: &str) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha(&l.tar))).collect();
    let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = put_blob(dir, &ok(serde_json::to_vec(&config)));
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (d, s) = put_blob(dir, &l.stored);
            json!({"mediaType": l.media, "digest": d, "size": s})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put_blob(dir, &ok(serde_json::to_vec(&manifest)));
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
           "platform": {"os": "linux", "architecture": arch}})
}

fn put_index(dir: &Path, manifests: Vec<serde_json::Value>) {
    ok(fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#));
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    ok(fs::write(dir.join("index.json"), ok(serde_json::to_vec(&index))));
}

/// A tar of the directory `dir` (members `./...`).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    ok(b.append_dir_all(".", dir));
    ok(b.into_inner())
}

fn base_layer() -> Vec<u8> {
    let mut b = Tb::new();
    b.dir("etc").file("etc/a", b"a").file("etc/b", b"b");
    b.dir("d").file("d/x", b"x").dir("d/sub").file("d/sub/y", b"y");
    b.dir("keep").file("keep/k", b"k");
    b.finish()
}

/// Whiteout of etc/a; d opaque with a new d/z (the marker after it, to
/// check order does not matter); keep/k2 added.
fn upper_layer() -> Vec<u8> {
    let mut b = Tb::new();
    b.dir("etc").file("etc/.wh.a", b"");
    b.dir("d").file("d/z", b"z").file("d/.wh..wh..opq", b"");
    b.file("keep/k2", b"k2");
    b.file(".wh..wh.plnk/123", b"aufs");
    b.finish()
}

fn layout(dir: &Path) {
    let m = put_image(dir, &[plain_layer(base_layer()), gzip_layer(upper_layer())], "amd64");
    put_index(dir, vec![m]);
}

fn check_layers(layers: &[ImportedLayer]) {
    assert_eq!(layers.len(), 2);
    assert!(layers[0].name.starts_with("01-") && layers[1].name.starts_with("02-"), "{}", layers[1].name);
    let digest = some(layers[1].source_digest.as_deref(), "source digest");
    assert!(digest.starts_with("sha256:") && layers[1].name.ends_with(&digest[7..19]));
    let (lower, upper) = (&layers[0].tree, &layers[1].tree);
    assert_eq!(contents(lower, "etc/a"), b"a");
    let wh = node(upper, "etc/a");
    assert_eq!(wh.kind, Kind::CharDevice { major: 0, minor: 0 });
    assert_eq!((wh.meta.mode, wh.meta.uid), (0, 0));
    assert_eq!(node(upper, "d").meta.xattrs.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice), Some(&b"y"[..]));
    assert_eq!(names(upper, "d"), ["z"]);
    assert!(!has(upper, ".wh..wh.plnk"), "aufs metadata is skipped");
    for l in layers {
        image_digest(&l.tree);
    }
}

fn check_flat(layers: &[ImportedLayer]) {
    assert_eq!(layers.len(), 1);
    assert_eq!((layers[0].name.as_str(), layers[0].source_digest.as_deref()), ("flat", None));
    let t = &layers[0].tree;
    assert!(!has(t, "etc/a"));
    assert_eq!(contents(t, "etc/b"), b"b");
    assert_eq!(names(t, "d"), ["z"], "opaque hides the lower entries, not its own layer's");
    assert!(node(t, "d").meta.xattrs.is_empty());
    assert_eq!(names(t, "keep"), ["k", "k2"]);
    for id in t.reachable() {
        assert!(!matches!(t.inode(id).kind, Kind::CharDevice { major: 0, minor: 0 }), "no whiteout remains");
    }
}

#[test]
fn oci_layout_directory_and_tar() {
    let dir = ok(tempfile::tempdir());
    layout(dir.path());
    check_layers(&ok(import(dir.path(), &ImportOptions::default())));
    check_flat(&ok(import(dir.path(), &ImportOptions { flatten: true, ..Default::default() })));
    let tar = tar_dir(dir.path());
    check_layers(&ok(import_bytes(&tar, &ImportOptions::default())));
    check_flat(&ok(import_bytes(&tar, &ImportOptions { flatten: true, ..Default::default() })));
    // Compressed, the archive is decompressed to a temporary file first.
    check_layers(&ok(import_bytes(&gzip(&tar), &ImportOptions::default())));
    // The same source gives the same images.
    let a = ok(import(dir.path(), &ImportOptions::default()));
    let b = ok(import_bytes(&tar, &ImportOptions::default()));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(image_digest(&x.tree), image_digest(&y.tree));
        assert_eq!(x.name, y.name);
    }
}

#[test]
fn opaque_marker_before_the_layers_own_entries() {
    let dir = ok(tempfile::tempdir());
    let mut b = Tb::new();
    b.dir("d").file("d/.wh..wh..opq", b"").file("d/z", b"z").dir("d/sub").file("d/sub/new", b"n");
    let m = put_image(dir.path(), &[plain_layer(base_layer()), plain_layer(b.finish())], "amd64");
    put_index(dir.path(), vec![m]);
    let flat = ok(import(dir.path(), &ImportOptions { flatten: true, ..Default::default() }));
    let t = &flat[0].tree;
    assert_eq!(names(t, "d"), ["sub", "z"]);
    assert_eq!(names(t, "d/sub"), ["new"], "lower d/sub/y is hidden by the opaque d");
}

#[test]
fn whiteout_conflicts_in_one_layer() {
    for flatten in [false, true] {
        let opts = ImportOptions { flatten, ..Default::default() };
        let dir = ok(tempfile::tempdir());
        let mut b = Tb::new();
        b.file("etc/.wh.a", b"").file("etc/a", b"again");
        let m = put_image(dir.path(), &[plain_layer(base_layer()), plain_layer(b.finish())], "amd64");
        put_index(dir.path(), vec![m]);
        let e = import(dir.path(), &opts);
        assert!(matches!(e, Err(ImportError::Duplicate { .. })), "{e:?}");
        let dir = ok(tempfile::tempdir());
        let mut b = Tb::new();
        b.file(".wh.d", b"").file("d/new", b"");
        let m = put_image(dir.path(), &[plain_layer(base_layer()), plain_layer(b.finish())], "amd64");
        put_index(dir.path(), vec![m]);
        let e = import(dir.path(), &opts);
        assert!(matches!(e, Err(ImportError::Whiteout { .. })), "{e:?}");
    }
}

#[test]
fn hard_link_to_a_lower_layer_when_flattening() {
    let dir = ok(tempfile::tempdir());
    let mut b = Tb::new();
    b.hardlink("etc/link", "etc/b");
    let m = put_image(dir.path(), &[plain_layer(base_layer()), plain_layer(b.finish())], "amd64");
    put_index(dir.path(), vec![m]);
    let flat = ok(import(dir.path(), &ImportOptions { flatten: true, ..Default::default() }));
    assert_eq!(flat[0].tree.lookup(b"etc/link"), flat[0].tree.lookup(b"etc/b"));
    // As separate layers the target is not in the layer.
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::HardLink { reason: "target missing", .. })), "{e:?}");
}

#[test]
fn platform_choice() {
    let dir = ok(tempfile::tempdir());
    let mut b = Tb::new();
    b.file("arch", b"amd64");
    let amd = put_image(dir.path(), &[plain_layer(b.finish())], "amd64");
    let mut b = Tb::new();
    b.file("arch", b"arm64");
    let arm = put_image(dir.path(), &[plain_layer(b.finish())], "arm64");
    // A nested index holds the arm64 one; an attestation is ignored.
    let nested =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm]});
    let (nd, ns) = put_blob(dir.path(), &ok(serde_json::to_vec(&nested)));
    let mut att = amd.clone();
    att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    put_index(
        dir.path(),
        vec![amd, json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": ns}), att],
    );
    let e = import(dir.path(), &ImportOptions::default());
    assert!(
        matches!(&e, Err(ImportError::ChoosePlatform { available, .. }) if available == &["linux/amd64", "linux/arm64"]),
        "{e:?}"
    );
    for (p, want) in [("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("linux/amd64", "amd64")] {
        let l = ok(import(dir.path(), &ImportOptions { platform: Some(p.into()), ..Default::default() }));
        assert_eq!(contents(&l[0].tree, "arch"), want.as_bytes());
    }
    let e = import(dir.path(), &ImportOptions { platform: Some("linux/riscv64".into()), ..Default::default() });
    assert!(matches!(e, Err(ImportError::NoSuchPlatform { .. })), "{e:?}");
    let e = import(dir.path(), &ImportOptions { platform: Some("linux".into()), ..Default::default() });
    assert!(matches!(e, Err(ImportError::Image { .. })), "{e:?}");
}

/// The path of the blob `digest` in layout `dir`.
fn blob_file(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(&digest[7..])
}

#[test]
fn blobs_are_verified() {
    let dir = ok(tempfile::tempdir());
    let layer = plain_layer(base_layer());
    let (ld, _) = put_blob(dir.path(), &layer.stored);
    layout(dir.path());
    // Same size, different content.
    let mut bytes = ok(fs::read(blob_file(dir.path(), &ld)));
    bytes[600] ^= 1;
    ok(fs::write(blob_file(dir.path(), &ld), &bytes));
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(&e, Err(ImportError::BlobDigest { blob, .. }) if *blob == ld), "{e:?}");
    // Different size.
    bytes.extend_from_slice(&[0; 512]);
    ok(fs::write(blob_file(dir.path(), &ld), &bytes));
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::BlobSize { .. })), "{e:?}");
    // Missing.
    ok(fs::remove_file(blob_file(dir.path(), &ld)));
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::MissingBlob { .. })), "{e:?}");
    // A symlink (even to the right content) is not followed.
    let outside = write(dir.path(), "outside", &layer.stored);
    ok(std::os::unix::fs::symlink(&outside, blob_file(dir.path(), &ld)));
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::Image { .. })), "{e:?}");
    // A digest that is not sha256 hex never becomes a path.
    let dir = ok(tempfile::tempdir());
    put_index(
        dir.path(),
        vec![json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../etc/passwd", "size": 10})],
    );
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::Image { .. })), "{e:?}");
}

#[test]
fn diff_ids_are_verified() {
    let dir = ok(tempfile::tempdir());
    let mut layer = plain_layer(base_layer());
    layer.tar = upper_layer(); // the config will name the wrong content
    put_index(dir.path(), vec![put_image(dir.path(), &[layer], "amd64")]);
    let e = import(dir.path(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::DiffId { .. })), "{e:?}");
}

/// A `docker save` archive in the layout before Docker 25: `<id>/layer.tar`
/// and `<config hex>.json`.
fn docker_save(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let config = ok(serde_json::to_vec(
        &json!({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
    ));
    let config_name = format!("{}.json", sha(&config));
    let mut b = Tb::new();
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        b.dir(&format!("{id}/"));
        b.file(&format!("{id}/VERSION"), b"1.0");
        b.file(&format!("{id}/layer.tar"), l);
        paths.push(format!("{id}/layer.tar"));
    }
    b.file(&config_name, &config);
    let manifest = json!([{"Config": config_name, "RepoTags": ["app:latest"], "Layers": paths}]);
    b.file("manifest.json", &ok(serde_json::to_vec(&manifest)));
    b.file("repositories", b"{}");
    b.finish()
}

#[test]
fn docker_save_archive() {
    let tar = docker_save(&[base_layer(), upper_layer()]);
    let layers = ok(import_bytes(&tar, &ImportOptions::default()));
    check_layers(&layers);
    assert_eq!(layers[0].source_digest.as_deref(), Some(format!("sha256:{}", sha(&base_layer())).as_str()));
    check_flat(&ok(import_bytes(&tar, &ImportOptions { flatten: true, ..Default::default() })));
    check_layers(&ok(import_bytes(&zstd(&tar), &ImportOptions::default())));
    let ok_platform = ImportOptions { platform: Some("linux/arm64".into()), ..Default::default() };
    assert!(import_bytes(&tar, &ok_platform).is_ok());
    let e = import_bytes(&tar, &ImportOptions { platform: Some("linux/amd64".into()), ..Default::default() });
    assert!(matches!(e, Err(ImportError::NoSuchPlatform { .. })), "{e:?}");
}

#[test]
fn docker_save_with_oci_layout_uses_the_manifest() {
    // Docker 25+: blobs/sha256/<hex> named by manifest.json, plus an OCI
    // index.json and oci-layout.
    let dir = ok(tempfile::tempdir());
    layout(dir.path());
    let index: serde_json::Value = ok(serde_json::from_slice(&ok(fs::read(dir.path().join("index.json")))));
    let mdigest = some(index["manifests"][0]["digest"].as_str(), "digest").to_owned();
    let manifest: serde_json::Value = ok(serde_json::from_slice(&ok(fs::read(blob_file(dir.path(), &mdigest)))));
    let path = |d: &serde_json::Value| format!("blobs/sha256/{}", &some(d["digest"].as_str(), "digest")[7..]);
    let layers: Vec<String> = some(manifest["layers"].as_array(), "layers").iter().map(path).collect();
    let dm = json!([{"Config": path(&manifest["config"]), "RepoTags": ["app:1"], "Layers": layers}]);
    ok(fs::write(dir.path().join("manifest.json"), ok(serde_json::to_vec(&dm))));
    let tar = tar_dir(dir.path());
    check_layers(&ok(import_bytes(&tar, &ImportOptions::default())));
    // A blob named by its digest is checked against it.
    let blob = blob_file(dir.path(), &format!("sha256:{}", &layers[0][13..]));
    let mut bytes = ok(fs::read(&blob));
    bytes[600] ^= 1;
    ok(fs::write(&blob, &bytes));
    let e = import_bytes(&tar_dir(dir.path()), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::BlobDigest { .. })), "{e:?}");
}

#[test]
fn docker_save_with_several_images_is_refused() {
    let tar = docker_save(&[base_layer()]);
    // Rewrite manifest.json to list the image twice.
    let t = one_member(&tar, "manifest.json");
    let mut v: serde_json::Value = ok(serde_json::from_slice(&t));
    let first = v[0].clone();
    some(v.as_array_mut(), "array").push(first);
    let mut b = Tb::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ok(ar.entries()) {
        let mut e = ok(e);
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        ok(std::io::Read::read_to_end(&mut e, &mut data));
        if name == "manifest.json" {
            data = ok(serde_json::to_vec(&v));
        }
        if e.header().entry_type() == EntryType::Directory {
            b.dir(&name);
        } else {
            b.file(&name, &data);
        }
    }
    let e = import_bytes(&b.finish(), &ImportOptions::default());
    assert!(matches!(e, Err(ImportError::Image { .. })), "{e:?}");
}

fn one_member(tar: &[u8], name: &str) -> Vec<u8> {
    let mut ar = tar::Archive::new(tar);
    for e in ok(ar.entries()) {
        let mut e = ok(e);
        if e.path_bytes().as_ref() == name.as_bytes() {
            let mut data = Vec::new();
            ok(std::io::Read::read_to_end(&mut e, &mut data));
            return data;
        }
    }
    panic!("{name}: not in the archive")
}

#[test]
fn layer_build_is_reproducible() {
    let dir = ok(tempfile::tempdir());
    let src = write(dir.path(), "rootfs.tar.gz", &gzip(&rootfs_tar()));
    let a = ok(layer::build(&src, &dir.path().join("a.squashfs"), &LayerOptions::default(), &mut |_| {}));
    let b = ok(layer::build(&src, &dir.path().join("b.squashfs"), &LayerOptions::default(), &mut |_| {}));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].name, "rootfs");
    assert_eq!(a[0].digest, b[0].digest);
    assert_eq!(ok(fs::read(&a[0].path)), ok(fs::read(&b[0].path)));
    // An image gives one file per layer in the output directory.
    let img = write(dir.path(), "app.tar", &docker_save(&[base_layer(), upper_layer()]));
    let out1 = ok(layer::build(&img, &dir.path().join("out1"), &LayerOptions::default(), &mut |_| {}));
    let out2 = ok(layer::build(&img, &dir.path().join("out2"), &LayerOptions::default(), &mut |_| {}));
    assert_eq!(out1.len(), 2);
    for (x, y) in out1.iter().zip(&out2) {
        assert_eq!((x.digest, &x.name, &x.source_digest), (y.digest, &y.name, &y.source_digest));
        assert!(x.path.ends_with(format!("{}.squashfs", x.name)));
    }
    let flat = LayerOptions { flatten: true, ..Default::default() };
    let f = ok(layer::build(&img, &dir.path().join("flat.squashfs"), &flat, &mut |_| {}));
    assert_eq!(f.len(), 1);
}
