//! Modification times survive `cairn layer build` (issue 15): Python keeps
//! a `.pyc` file valid only while the source's mtime and size match what
//! the `.pyc` header recorded, so an archive's times must be kept, and a
//! directory's clamped to `SOURCE_DATE_EPOCH` so builds stay reproducible.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

const SOURCE: &[u8] = b"def hello():\n    return 'hi'\n";
/// When the source was written (as an image's layer records it).
const SOURCE_TIME: u32 = 1_650_000_000;

/// A timestamp-based `.pyc` (PEP 552, flags 0): magic, flags, the source's
/// mtime and size, then the code object (a stand-in here).
fn pyc(source_mtime: u32, source_size: u32) -> Vec<u8> {
    let mut v = b"\xcb\x0d\x0d\x0a".to_vec(); // Python 3.12's magic
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&source_mtime.to_le_bytes());
    v.extend_from_slice(&source_size.to_le_bytes());
    v.extend_from_slice(b"\xe3 code object stand-in");
    v
}

/// What Python's SourceFileLoader checks before it uses a `.pyc`.
fn pyc_valid(pyc: &[u8], source: &Entry) -> bool {
    let word = |i: usize| u32::from_le_bytes(pyc[i..i + 4].try_into().unwrap());
    word(4) == 0 && word(8) == source.mtime && word(12) as usize == source.data.len()
}

#[derive(Debug)]
struct Entry {
    mtime: u32,
    data: Vec<u8>,
}

/// Every file and directory of a layer, with its time, read by backhand.
fn read_layer(image: &Path) -> BTreeMap<PathBuf, Entry> {
    use backhand::{FilesystemReader, InnerNode};
    let fs = FilesystemReader::from_reader(std::io::BufReader::new(std::fs::File::open(image).unwrap())).unwrap();
    let mut out = BTreeMap::new();
    for node in fs.files() {
        let mut data = Vec::new();
        if let InnerNode::File(f) = &node.inner {
            fs.file(f).reader().read_to_end(&mut data).unwrap();
        }
        out.insert(node.fullpath.clone(), Entry { mtime: node.header.mtime, data });
    }
    out
}

fn cairn(args: &[&str], dir: &Path, epoch: Option<&str>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args(args).arg("--quiet").current_dir(dir).env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn append(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mtime: u64) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    t.append_data(&mut h, path, data).unwrap();
}

#[test]
fn bytecode_compiled_from_an_archive_stays_valid() {
    let d = tempfile::tempdir().unwrap();
    let mut t = tar::Builder::new(Vec::new());
    append(&mut t, "app/greet.py", SOURCE, u64::from(SOURCE_TIME));
    append(&mut t, "app/__pycache__/greet.cpython-312.pyc", &pyc(SOURCE_TIME, SOURCE.len() as u32), 1_650_000_100);
    // A PAX mtime record (with a fraction) wins over the header's time.
    t.append_pax_extensions([("mtime", &b"1650000200.75"[..])]).unwrap();
    append(&mut t, "app/pax.py", b"x = 1\n", 7);
    std::fs::write(d.path().join("app.tar"), t.into_inner().unwrap()).unwrap();

    cairn(&["layer", "build", "app.tar", "--out", "app.squashfs"], d.path(), None);
    let layer = read_layer(&d.path().join("app.squashfs"));
    let source = &layer[Path::new("/app/greet.py")];
    assert_eq!(source.mtime, SOURCE_TIME);
    assert!(pyc_valid(&layer[Path::new("/app/__pycache__/greet.cpython-312.pyc")].data, source));
    assert_eq!(layer[Path::new("/app/pax.py")].mtime, 1_650_000_200);
    // Directories the archive does not list have time 0.
    assert_eq!(layer[Path::new("/app")].mtime, 0);
}

fn set_mtime(path: &Path, secs: u32) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs.into())).unwrap();
}

#[test]
fn directory_times_are_clamped_to_source_date_epoch() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("app/__pycache__")).unwrap();
    std::fs::write(root.join("app/greet.py"), SOURCE).unwrap();
    std::fs::write(root.join("app/__pycache__/greet.cpython-312.pyc"), pyc(SOURCE_TIME, SOURCE.len() as u32)).unwrap();
    std::fs::write(root.join("app/fresh.txt"), "written just now\n").unwrap();
    set_mtime(&root.join("app/greet.py"), SOURCE_TIME);

    // Older than SOURCE_DATE_EPOCH: kept, and the bytecode stays valid.
    let epoch = "1700000000";
    cairn(&["layer", "build", "root", "--out", "a.squashfs"], d.path(), Some(epoch));
    let layer = read_layer(&d.path().join("a.squashfs"));
    let source = &layer[Path::new("/app/greet.py")];
    assert_eq!(source.mtime, SOURCE_TIME);
    assert!(pyc_valid(&layer[Path::new("/app/__pycache__/greet.cpython-312.pyc")].data, source));
    // Newer (written by this test): clamped.
    assert_eq!(layer[Path::new("/app/fresh.txt")].mtime, 1_700_000_000);

    // Touching a file after the epoch changes nothing: the same bytes.
    set_mtime(&root.join("app/fresh.txt"), 1_800_000_000);
    cairn(&["layer", "build", "root", "--out", "b.squashfs"], d.path(), Some(epoch));
    let (a, b) =
        (std::fs::read(d.path().join("a.squashfs")).unwrap(), std::fs::read(d.path().join("b.squashfs")).unwrap());
    assert!(a == b, "touching a file newer than SOURCE_DATE_EPOCH changed the layer");

    // Without SOURCE_DATE_EPOCH every time is 0 (the documented default).
    cairn(&["layer", "build", "root", "--out", "c.squashfs"], d.path(), None);
    assert!(read_layer(&d.path().join("c.squashfs")).values().all(|e| e.mtime == 0));

    // A malformed SOURCE_DATE_EPOCH is an error, not a silent default.
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["layer", "build", "root", "--out", "d.squashfs", "--quiet"])
        .current_dir(d.path())
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH=\"yesterday\""));
    assert!(!d.path().join("d.squashfs").exists());
}
