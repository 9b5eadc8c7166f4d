//! Hostile archives against `cairn layer build`'s importer, with the peak
//! heap use measured by a counting global allocator: a few KiB of gzip must
//! not make the importer hold megabytes (extension headers are capped before
//! they are read), and a decompression bomb must stop at its budget.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cairn_build::import::{import, ImportError, ImportOptions};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only
// counters are updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One measurement at a time (tests run on several threads).
static SERIAL: Mutex<()> = Mutex::new(());

/// Run `f`, returning its result and the most heap it held above what was
/// live when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

/// The start of a result's debug form (a long name can be megabytes).
fn short<T: std::fmt::Debug>(r: &T) -> String {
    format!("{r:?}").chars().take(400).collect()
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A ustar header block for a member `name` of type `ty` and `size` bytes.
fn header(name: &str, ty: tar::EntryType, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    ok(h.set_path(name));
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    *h.as_bytes()
}

/// Write, gzip-compressed into `out`, a tar whose first member is an
/// extension header of type `ty` holding `size` bytes (a PAX header with
/// one huge record, or a long name of `a`s), then a file. Streamed, so the
/// test itself holds little.
fn write_bomb(out: &Path, ty: tar::EntryType, size: usize) {
    let mut gz = flate2::write::GzEncoder::new(ok(fs::File::create(out)), flate2::Compression::best());
    ok(gz.write_all(&header("PaxHeaders/bomb", ty, size as u64)));
    let chunk = vec![b'a'; 64 << 10];
    let mut left = size;
    if ty == tar::EntryType::XHeader {
        let prefix = format!("{size:020} comment=");
        ok(gz.write_all(prefix.as_bytes()));
        left -= prefix.len() + 1;
    }
    while left > 0 {
        let n = left.min(chunk.len());
        ok(gz.write_all(&chunk[..n]));
        left -= n;
    }
    if ty == tar::EntryType::XHeader {
        ok(gz.write_all(b"\n"));
    }
    ok(gz.write_all(&vec![0u8; (512 - size % 512) % 512]));
    ok(gz.write_all(&header("after", tar::EntryType::Regular, 0)));
    ok(gz.write_all(&[0u8; 1024]));
    ok(ok(gz.finish()).sync_all());
}

#[test]
fn huge_extension_headers_are_refused_without_reading_them() {
    let _serial = SERIAL.lock();
    let dir = ok(tempfile::tempdir());
    for (ty, what) in [
        (tar::EntryType::XHeader, "PAX extended header"),
        (tar::EntryType::GNULongName, "GNU long name"),
        (tar::EntryType::GNULongLink, "GNU long link"),
    ] {
        let src = dir.path().join(format!("bomb-{}.tar.gz", ty.as_byte()));
        let size = 64 << 20;
        write_bomb(&src, ty, size);
        let stored = ok(fs::metadata(&src)).len();
        assert!(stored < 256 << 10, "{what}: the bomb is {stored} bytes of gzip");
        let (r, peak) = peak_of(|| import(&src, &ImportOptions::default()));
        assert!(peak < 4 << 20, "{what}: {size} bytes claimed, peak heap {peak} bytes");
        match r {
            Err(ImportError::ExtensionTooLarge { member, what: w, size: s, .. }) => {
                assert_eq!((member.as_str(), w.to_string().as_str(), s), ("PaxHeaders/bomb", what, size as u64));
            }
            other => panic!("{what}: {}", short(&other)),
        }
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_budget_and_leaves_no_file() {
    let _serial = SERIAL.lock();
    let dir = ok(tempfile::tempdir());
    // A `docker save` archive (manifest.json first) with a 256 MiB layer of
    // zeros: a few hundred KiB of gzip.
    let src = dir.path().join("bomb.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(ok(fs::File::create(&src)), flate2::Compression::best());
    let manifest = br#"[{"Config":"config.json","RepoTags":["x:y"],"Layers":["l/layer.tar"]}]"#;
    ok(gz.write_all(&header("manifest.json", tar::EntryType::Regular, manifest.len() as u64)));
    ok(gz.write_all(manifest));
    ok(gz.write_all(&vec![0u8; 512 - manifest.len() % 512]));
    let layer = 256u64 << 20;
    ok(gz.write_all(&header("l/layer.tar", tar::EntryType::Regular, layer)));
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(layer >> 20) {
        ok(gz.write_all(&zeros));
    }
    ok(gz.write_all(&[0u8; 1024]));
    ok(ok(gz.finish()).sync_all());
    let stored = ok(fs::metadata(&src)).len();
    assert!(stored < 1 << 20, "the bomb is {stored} bytes of gzip");

    // The temporary file goes to $TMPDIR: a directory of its own, empty
    // afterwards.
    let tmp = dir.path().join("tmp");
    ok(fs::create_dir(&tmp));
    std::env::set_var("TMPDIR", &tmp);
    let budget = 8 << 20;
    let (r, peak) = peak_of(|| import(&src, &ImportOptions { max_bytes: budget, ..Default::default() }));
    std::env::remove_var("TMPDIR");
    assert!(peak < 4 << 20, "peak heap {peak} bytes");
    match r {
        Err(e @ ImportError::TempTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("bomb.tar.gz") && msg.contains(&format!("{budget} byte budget")), "{msg}");
        }
        other => panic!("{}", short(&other)),
    }
    assert_eq!(ok(fs::read_dir(&tmp)).count(), 0, "a temporary file is left in $TMPDIR");
}
