//! Tests of the importer: archives are built here with the `tar` crate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::{Builder, EntryType, Header};

use super::*;
use crate::layer::{self, LayerOptions};
use crate::squashfs;
use crate::tree::{FileData, Inode, Kind, Tree};

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
    b.device("./dev/gone", EntryType::Char, 0, 0);
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
    assert_eq!(t.inode(crate::tree::ROOT).meta.mode, 0o700);
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
    assert_eq!(node(&t, "dev/gone").kind, Kind::CharDevice { major: 0, minor: 0 }, "a whiteout is kept");
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
    let e = import_bytes(&tar, &ImportOptions { max_bytes: 1000, ..Default::default() });
    assert!(matches!(&e, Err(ImportError::TooLarge { member, max: 1000, .. }) if member == "b"), "{e:?}");
    assert!(import_bytes(&tar, &ImportOptions { max_bytes: 1200, ..Default::default() }).is_ok());
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

// ---- device nodes, overlay xattrs, extension headers, budgets (issue 8) ----

/// A one-layer `docker save` archive holding `layer`.
fn one_layer_image(layer: Vec<u8>) -> Vec<u8> {
    docker_save(&[layer])
}

#[test]
fn device_nodes_are_refused() {
    let mut b = Tb::new();
    b.dir("dev").device("dev/null", EntryType::Char, 1, 3);
    let e = err_of(b);
    assert!(
        matches!(&e, ImportError::Device { member, kind: "character device", major: 1, minor: 3, .. } if member == "dev/null"),
        "{e:?}"
    );
    let mut b = Tb::new();
    b.device("dev/vda", EntryType::Block, 254, 0);
    let e = err_of(b);
    assert!(
        matches!(&e, ImportError::Device { member, kind: "block device", major: 254, minor: 0, .. } if member == "dev/vda"),
        "{e:?}"
    );
    assert!(e.to_string().contains("member dev/vda: block device 254:0"), "{e}");
    // A character device 0:1 is no whiteout.
    let mut b = Tb::new();
    b.device("x", EntryType::Char, 0, 1);
    assert!(matches!(err_of(b), ImportError::Device { major: 0, minor: 1, .. }));
    // In an image layer: the error names the layer.
    let mut l = Tb::new();
    l.file("a", b"a").device("disk", EntryType::Block, 8, 0);
    for flatten in [false, true] {
        let e = import_bytes(&one_layer_image(l.0.get_ref().clone()), &ImportOptions { flatten, ..Default::default() });
        match e {
            Err(ImportError::Device { archive, member, .. }) => {
                assert!(archive.contains("layer 1 of 1"), "{archive}");
                assert_eq!(member, "disk");
            }
            other => panic!("{other:?}"),
        }
    }
    // Whiteouts (0:0, from `.wh.` or as such) and FIFOs are kept.
    let mut l = Tb::new();
    l.device("gone", EntryType::Char, 0, 0).file(".wh.other", b"").raw(b"fifo", EntryType::Fifo, 0o600, 0, b"", b"");
    let layers = ok(import_bytes(&one_layer_image(l.finish()), &ImportOptions::default()));
    let t = &layers[0].tree;
    assert_eq!(node(t, "gone").kind, Kind::CharDevice { major: 0, minor: 0 });
    assert_eq!(node(t, "other").kind, Kind::CharDevice { major: 0, minor: 0 });
    assert_eq!(node(t, "fifo").kind, Kind::Fifo);
}

#[test]
fn directory_device_nodes_and_overlay_xattrs_are_refused() {
    use crate::scan::tests::{is_root, set_xattr};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if !is_root() {
        eprintln!("skipping: mknod and trusted.* need root");
        return;
    }
    let mknod = |p: &Path, mode: libc::mode_t, major: u32, minor: u32| {
        let c = ok(CString::new(p.as_os_str().as_bytes()));
        // SAFETY: `c` is NUL-terminated.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) }, 0);
    };
    let build = |src: &Path| layer::build(src, &src.with_extension("squashfs"), &LayerOptions::default(), &mut |_| {});
    let d = ok(tempfile::tempdir());
    // Whiteouts and the opaque marker on a directory are the overlay format: kept.
    let src = d.path().join("ok");
    ok(fs::create_dir_all(src.join("sub")));
    mknod(&src.join("gone"), libc::S_IFCHR, 0, 0);
    ok(set_xattr(&src.join("sub"), "trusted.overlay.opaque", b"y"));
    ok(set_xattr(&src.join("sub"), "trusted.other", b"fine"));
    ok(build(&src));
    // A block device.
    let src = d.path().join("blk");
    ok(fs::create_dir_all(src.join("dev")));
    mknod(&src.join("dev/vda"), libc::S_IFBLK | 0o600, 254, 0);
    let e = build(&src);
    assert!(
        matches!(&e, Err(layer::LayerError::Device { path, kind: "block device", major: 254, minor: 0 }) if *path == src.join("dev/vda")),
        "{e:?}"
    );
    assert!(!src.with_extension("squashfs").exists());
    // A character device.
    let src = d.path().join("chr");
    ok(fs::create_dir_all(&src));
    mknod(&src.join("mem"), libc::S_IFCHR | 0o600, 1, 1);
    let e = build(&src);
    assert!(matches!(&e, Err(layer::LayerError::Device { kind: "character device", major: 1, minor: 1, .. })), "{e:?}");
    // Overlay xattrs other than the opaque marker on a directory.
    for (file, name, value) in [
        ("dir", "trusted.overlay.redirect", &b"/etc"[..]),
        ("file", "trusted.overlay.metacopy", b""),
        ("file", "trusted.overlay.opaque", b"y"),
        ("dir", "trusted.overlay.opaque", b"x"),
        ("file", "user.overlay.origin", b"o"),
    ] {
        let src = d.path().join(format!("x-{name}-{file}"));
        ok(fs::create_dir_all(src.join("dir")));
        ok(fs::write(src.join("file"), "f"));
        ok(set_xattr(&src.join(file), name, value));
        let e = build(&src);
        assert!(
            matches!(&e, Err(layer::LayerError::OverlayXattr { path, name: n }) if *path == src.join(file) && n == name),
            "{name} on {file}: {e:?}"
        );
    }
}

#[test]
fn overlay_xattrs_in_archives_are_refused() {
    for name in
        ["trusted.overlay.redirect", "trusted.overlay.metacopy", "trusted.overlay.opaque", "user.overlay.origin"]
    {
        let key = format!("SCHILY.xattr.{name}");
        let mut b = Tb::new();
        b.pax(&[(key.as_str(), b"y")]).dir("d");
        let e = err_of(b);
        assert!(matches!(&e, ImportError::OverlayXattr { member, name: n, .. } if member == "d" && n == name), "{e:?}");
        // In an image layer too, where the importer makes its own opaque xattrs.
        let mut l = Tb::new();
        l.dir("d").file("d/.wh..wh..opq", b"").pax(&[(key.as_str(), b"y")]).file("e", b"");
        let e = import_bytes(&one_layer_image(l.finish()), &ImportOptions::default());
        assert!(matches!(&e, Err(ImportError::OverlayXattr { member, .. }) if member == "e"), "{e:?}");
    }
    let mut b = Tb::new();
    b.pax(&[("SCHILY.xattr.trusted.other", b"y")]).dir("d");
    assert!(import_bytes(&b.finish(), &ImportOptions::default()).is_ok(), "other trusted.* are kept");
}

/// A tar holding one extension header of type `ty` with `len` bytes of
/// data, then a file.
fn with_extension(ty: EntryType, len: usize) -> Vec<u8> {
    let mut data = vec![b'a'; len];
    if ty == EntryType::XHeader {
        // One record: "<len> comment=aaa...\n".
        let body = len - 10 - " comment=\n".len();
        data = format!("{len:010} comment={}\n", "a".repeat(body)).into_bytes();
        assert_eq!(data.len(), len);
    }
    let mut b = Tb::new();
    b.file("before", b"x");
    b.raw(b"././@LongLink", ty, 0o644, 0, b"", &data);
    b.file("after", b"y");
    b.finish()
}

#[test]
fn extension_headers_are_capped() {
    for (ty, what) in [
        (EntryType::GNULongName, "GNU long name"),
        (EntryType::GNULongLink, "GNU long link"),
        (EntryType::XHeader, "PAX extended header"),
    ] {
        let tar = with_extension(ty, (1 << 20) + 1);
        for data in [tar.clone(), gzip(&tar)] {
            let e = import_bytes(&data, &ImportOptions::default());
            match e {
                Err(e @ ImportError::ExtensionTooLarge { .. }) => {
                    let ImportError::ExtensionTooLarge { member, after, what: w, size, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(
                        (member.as_str(), after.as_deref(), w.to_string().as_str()),
                        ("././@LongLink", Some("before"), what)
                    );
                    assert_eq!(*size, (1 << 20) + 1);
                    assert!(
                        e.to_string().ends_with(&format!("{what} of 1048577 bytes, over the 1048576 byte cap")),
                        "{e}"
                    );
                }
                other => panic!("{what}: {}", format!("{other:?}").chars().take(400).collect::<String>()),
            }
        }
        // In an image layer, and in the image archive itself.
        let e = import_bytes(&one_layer_image(tar.clone()), &ImportOptions::default());
        assert!(
            matches!(&e, Err(ImportError::ExtensionTooLarge { archive, .. }) if archive.contains("layer 1 of 1")),
            "{e:?}"
        );
        let mut outer = Tb::new();
        outer.raw(b"././@LongLink", ty, 0o644, 0, b"", &with_extension(ty, (1 << 20) + 1)[512..512 + (1 << 20) + 1]);
        outer.file("manifest.json", b"[]");
        let e = import_bytes(&gzip(&outer.finish()), &ImportOptions::default());
        assert!(matches!(&e, Err(ImportError::ExtensionTooLarge { .. })), "{e:?}");
    }
    // At the cap: read (a long name of that length is then refused as a path).
    let tar = with_extension(EntryType::XHeader, 1 << 20);
    assert!(import_bytes(&tar, &ImportOptions::default()).is_ok());
    let tar = with_extension(EntryType::GNULongName, 1 << 20);
    assert!(matches!(import_bytes(&tar, &ImportOptions::default()), Err(ImportError::BadPath { .. })));
}

#[test]
fn extension_headers_apply_as_the_tar_crate_would() {
    // PAX path, linkpath, uid and gid; GNU long link.
    let mut b = Tb::new();
    b.file("target-file", b"t");
    b.pax(&[("path", b"pax/name"), ("uid", b"4000000"), ("gid", b"4000001")]).file("short", b"data");
    b.pax(&[("linkpath", b"target-file")]).symlink("lnk", "ignored");
    let long = format!("{}/x", "l".repeat(150));
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    ok(b.0.append_link(&mut h, "long-link", &long));
    let t = one(&b.finish());
    let n = node(&t, "pax/name");
    assert_eq!((n.meta.uid, n.meta.gid), (4_000_000, 4_000_001));
    assert_eq!(contents(&t, "pax/name"), b"data");
    assert_eq!(node(&t, "lnk").kind, Kind::Symlink(b"target-file".to_vec()));
    assert_eq!(node(&t, "long-link").kind, Kind::Symlink(long.into_bytes()));
    // A PAX size that differs from the header's is refused (the two
    // readings of the archive would differ); one that agrees is fine.
    let mut b = Tb::new();
    b.pax(&[("size", b"1024")]).file("f", b"abc");
    assert!(matches!(err_of(b), ImportError::Unsupported { member, .. } if member == "f"));
    let mut b = Tb::new();
    b.pax(&[("size", b"3")]).file("f", b"abc");
    assert_eq!(contents(&one(&b.finish()), "f"), b"abc");
    // An extension header with nothing after it, and two for one member.
    let mut b = Tb::new();
    b.file("a", b"").pax(&[("path", b"x")]);
    assert!(matches!(err_of(b), ImportError::Malformed { .. }));
    let mut b = Tb::new();
    b.pax(&[("path", b"x")]).pax(&[("path", b"y")]).file("a", b"");
    assert!(matches!(err_of(b), ImportError::Malformed { .. }));
}

#[test]
fn compressed_image_archives_are_decompressed_under_the_budget() {
    // A docker save archive with a 1 MiB layer of zeros: about 1 KiB of gzip.
    let mut l = Tb::new();
    l.file("zeros", &vec![0u8; 1 << 20]);
    let archive = gzip(&one_layer_image(l.finish()));
    assert!(archive.len() < 16 << 10, "{}", archive.len());
    let e = import_bytes(&archive, &ImportOptions { max_bytes: 512 << 10, ..Default::default() });
    assert!(matches!(&e, Err(ImportError::TempTooLarge { max, .. }) if *max == 512 << 10), "{e:?}");
    assert!(e.err().is_some_and(|e| e.to_string().contains("524288 byte budget")));
    let e = import_bytes(
        &zstd(&one_layer_image(vec![0u8; 1024])),
        &ImportOptions { max_bytes: 1000, ..Default::default() },
    );
    assert!(matches!(&e, Err(ImportError::TempTooLarge { max: 1000, .. })), "{e:?}");
    // Under the budget it is read.
    assert!(import_bytes(&archive, &ImportOptions { max_bytes: 2 << 20, ..Default::default() }).is_ok());
}

#[test]
fn default_budget() {
    assert_eq!(ImportOptions::default().max_bytes, 4 << 30);
    assert_eq!(LayerOptions::default().max_bytes, DEFAULT_MAX_BYTES);
}

#[test]
fn member_count_is_bounded() {
    let mut b = Tb::new();
    for i in 0..5 {
        b.file(&format!("f{i}"), b"");
    }
    let tar = b.finish();
    let e = import_bytes(&tar, &ImportOptions { max_entries: 4, ..Default::default() });
    assert!(matches!(&e, Err(ImportError::TooManyEntries { member, max: 4, .. }) if member == "f4"), "{e:?}");
    assert!(import_bytes(&tar, &ImportOptions { max_entries: 5, ..Default::default() }).is_ok());
    // Counted over all layers of an image, and in the image archive itself.
    let image = docker_save(&[tar.clone(), tar]);
    let e = import_bytes(&image, &ImportOptions { max_entries: 9, ..Default::default() });
    assert!(
        matches!(&e, Err(ImportError::TooManyEntries { archive, .. }) if archive.contains("layer 2 of 2")),
        "{e:?}"
    );
    let e = import_bytes(&image, &ImportOptions { max_entries: 3, ..Default::default() });
    assert!(matches!(&e, Err(ImportError::TooManyEntries { archive, .. }) if !archive.contains("layer")), "{e:?}");
    assert_eq!(ImportOptions::default().max_entries, 1 << 20);
}

#[test]
fn pax_times_are_whole_seconds_within_u32() {
    use super::tarlayer::pax_time;
    assert_eq!(pax_time(b"1650000200.75"), Some(1_650_000_200));
    assert_eq!(pax_time(b"0"), Some(0));
    assert_eq!(pax_time(b"-12.5"), Some(0));
    assert_eq!(pax_time(b"4294967296"), Some(u32::MAX));
    assert_eq!(pax_time(b"99999999999999999999999"), Some(u32::MAX));
    for bad in [&b""[..], b".5", b"1e9", b"12:00", b"1.2.3", b"-"] {
        assert_eq!(pax_time(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn references_parse_as_skopeo_reads_them() {
    let r = |s: &str| ok(parse_reference(s));
    let sel = |t: Transport, tag: Option<&str>| Select { transport: Some(t), tag: tag.map(str::to_owned) };
    assert_eq!(r("img.tar"), (PathBuf::from("img.tar"), Select::default()));
    assert_eq!(r("./oci:dir"), (PathBuf::from("./oci:dir"), Select::default()));
    assert_eq!(r("oci:layout"), (PathBuf::from("layout"), sel(Transport::Oci, None)));
    assert_eq!(r("oci:layout:v1.2"), (PathBuf::from("layout"), sel(Transport::Oci, Some("v1.2"))));
    assert_eq!(r("oci-archive:a.tar:edge"), (PathBuf::from("a.tar"), sel(Transport::OciArchive, Some("edge"))));
    assert_eq!(
        r("docker-archive:s.tar:registry:5000/app:1"),
        (PathBuf::from("s.tar"), sel(Transport::DockerArchive, Some("registry:5000/app:1")))
    );
    assert_eq!(r("docker-archive:s.tar:@1"), (PathBuf::from("s.tar"), sel(Transport::DockerArchive, Some("@1"))));
    for bad in ["oci:", "oci::tag", "oci-archive:a.tar:", "docker-archive::x"] {
        assert!(matches!(parse_reference(bad), Err(ImportError::Image { .. })), "{bad}");
    }
    assert_eq!(platform_of_target("x86_64-unknown-linux-musl"), Some("linux/amd64"));
    assert_eq!(platform_of_target("aarch64-unknown-linux-musl"), Some("linux/arm64"));
    assert_eq!(platform_of_target("mips-unknown-linux-musl"), None);
}

fn tagged(dir: &Path, content: &[u8], arch: &str, tag: Option<&str>) -> serde_json::Value {
    let mut b = Tb::new();
    b.file("which", content);
    let mut d = put_image(dir, &[plain_layer(b.finish())], arch);
    if let Some(t) = tag {
        d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
    }
    d
}

fn with(transport: Transport, tag: Option<&str>) -> ImportOptions {
    ImportOptions { select: Select { transport: Some(transport), tag: tag.map(str::to_owned) }, ..Default::default() }
}

#[test]
fn oci_tags_pick_an_image_of_the_layout() {
    let dir = ok(tempfile::tempdir());
    let d = dir.path().join("layout");
    let v1 = tagged(&d, b"v1", "amd64", Some("v1"));
    let v2 = tagged(&d, b"v2", "amd64", Some("v2"));
    // v3 is a multi-platform index: the tag, then the platform.
    let a = tagged(&d, b"v3-amd64", "amd64", None);
    let r = tagged(&d, b"v3-arm64", "arm64", None);
    let nested =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [a, r]});
    let (nd, ns) = put_blob(&d, &ok(serde_json::to_vec(&nested)));
    let v3 = json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": ns,
                    "annotations": {"org.opencontainers.image.ref.name": "v3"}});
    put_index(&d, vec![v1, v2, v3]);
    let which = |opts: &ImportOptions, src: &Path| contents(&ok(import(src, opts))[0].tree, "which");
    assert_eq!(which(&with(Transport::Oci, Some("v2")), &d), b"v2");
    assert_eq!(which(&with(Transport::Oci, Some("v1")), &d), b"v1");
    let arm = ImportOptions { platform: Some("linux/arm64".into()), ..with(Transport::Oci, Some("v3")) };
    assert_eq!(which(&arm, &d), b"v3-arm64");
    let e = import(&d, &with(Transport::Oci, Some("v3")));
    assert!(matches!(e, Err(ImportError::ChoosePlatform { .. })), "{e:?}");
    // Without a tag, the three are one choice too many.
    assert!(import(&d, &ImportOptions::default()).is_err());
    let e = import(&d, &with(Transport::Oci, Some("v9"))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("no image tagged \"v9\"") && e.contains("v1, v2, v3"), "{e}");
    // The same as an archive (oci-archive:), plain and gzip.
    let tar = tar_dir(&d);
    let f = write(dir.path(), "layout.tar", &tar);
    assert_eq!(which(&with(Transport::OciArchive, Some("v2")), &f), b"v2");
    let fz = write(dir.path(), "layout.tar.gz", &gzip(&tar));
    assert_eq!(which(&with(Transport::OciArchive, Some("v1")), &fz), b"v1");
    // The transport must match what the source is.
    let e = import(&f, &with(Transport::Oci, Some("v2"))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not what oci: names"), "{e}");
    let e = import(&d, &with(Transport::OciArchive, None)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not what oci-archive: names"), "{e}");
    let e = import(&f, &with(Transport::DockerArchive, None)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not what docker-archive: names"), "{e}");
    let rootfs = write(dir.path(), "rootfs.tar", &rootfs_tar());
    let e = import(&rootfs, &with(Transport::OciArchive, None)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("root filesystem tar"), "{e}");
}

/// A `docker save` of two images: `app:1` (file which = "one") and
/// `docker.io/library/busybox:latest` ("two").
fn docker_save_two() -> Vec<u8> {
    let mut b = Tb::new();
    let mut entries = Vec::new();
    for (i, (content, tag)) in [(&b"one"[..], "app:1"), (b"two", "docker.io/library/busybox:latest")].iter().enumerate()
    {
        let mut l = Tb::new();
        l.file("which", content);
        let layer = l.finish();
        let config = ok(serde_json::to_vec(
            &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]}}),
        ));
        let config_name = format!("{}.json", sha(&config));
        let id = format!("{:064x}", i + 1);
        b.dir(&format!("{id}/"));
        b.file(&format!("{id}/layer.tar"), &layer);
        b.file(&config_name, &config);
        entries.push(json!({"Config": config_name, "RepoTags": [tag], "Layers": [format!("{id}/layer.tar")]}));
    }
    b.file("manifest.json", &ok(serde_json::to_vec(&serde_json::Value::Array(entries))));
    b.finish()
}

#[test]
fn docker_archive_references_pick_an_image() {
    let tar = docker_save_two();
    let which = |r: &str| contents(&ok(import_bytes(&tar, &with(Transport::DockerArchive, Some(r))))[0].tree, "which");
    assert_eq!(which("app:1"), b"one");
    assert_eq!(which("busybox"), b"two");
    assert_eq!(which("busybox:latest"), b"two");
    assert_eq!(which("library/busybox:latest"), b"two");
    assert_eq!(which("docker.io/library/busybox"), b"two");
    assert_eq!(which("@0"), b"one");
    assert_eq!(which("@1"), b"two");
    let e = import_bytes(&tar, &ImportOptions::default()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("2 images") && e.contains("docker-archive:FILE:@N"), "{e}");
    for (r, want) in [("app:2", "no image tagged"), ("@2", "lists 2 images"), ("@x", "is not @N")] {
        let e = import_bytes(&tar, &with(Transport::DockerArchive, Some(r))).err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or_default().contains(want), "{r}: {e:?}");
    }
}
