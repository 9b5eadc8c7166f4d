//! Write the seed corpora under `fuzz/corpus/<target>/` with the host-side
//! encoders of `cairn-format` and the appliance compiler of `cairn-build`:
//!
//! ```text
//! cd fuzz && cargo run --features seeds --bin seeds
//! ```
//!
//! Manifests come from the appliance files of the repository (compiled with
//! made-up layer digests), so the seeds follow the manifest format as it
//! changes. Each corpus gets real, valid inputs plus a few truncated, flipped
//! or otherwise broken ones. The files are deterministic: running this again
//! rewrites identical bytes (ed25519 signatures are deterministic).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cairn_build::appliance::Appliance;
use cairn_build::verity::{identity_by_digest, LayerIdentity};
use cairn_format::bootstate::{
    self, BootState, LayerSlot, Slot, SlotStatus, Trial, COPY_SIZE, MAX_LAYER_SLOTS, RECORD_SIZE,
};
use cairn_format::bundle::{self, LayerPart, Part, Toc};
use cairn_format::envelope::{self, OpenError};
use cairn_format::journal;
use cairn_format::manifest::Network;
use cairn_format::{Digest, Manifest};
use cairn_fuzz::{seal_into, seal_into_as, test_public_key, test_signing_key, OTHER_KEY_SEED};
use ed25519_dalek::SigningKey;

/// Appliance files to compile, relative to the repository root.
const APPLIANCES: &[&str] = &[
    "images/examples/demo/appliance.toml",
    "qemu-tests/appliances/limits-extended.toml",
    "qemu-tests/appliances/network.toml",
    "qemu-tests/appliances/hostile.toml",
    "qemu-tests/appliances/restart.toml",
];

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().unwrap_or(fuzz);
    let corpus = fuzz.join("corpus");

    let manifests: Vec<(String, Manifest)> = APPLIANCES
        .iter()
        .filter_map(|rel| match compile(&repo.join(rel)) {
            Ok(m) => Some((m.appliance.as_str().to_owned(), m)),
            Err(e) => {
                eprintln!("skipping {rel}: {e}");
                None
            }
        })
        .collect();
    assert!(!manifests.is_empty(), "no appliance file compiled");

    let n = manifest_seeds(&corpus.join("manifest_decode"), &manifests);
    println!("manifest_decode: {n} files");
    let n = envelope_seeds(&corpus.join("envelope_open"), &manifests);
    println!("envelope_open: {n} files");
    let n = bootstate_seeds(&corpus.join("bootstate_record"));
    println!("bootstate_record: {n} files");
    let n = bundle_seeds(&corpus.join("bundle_toc"), &manifests);
    println!("bundle_toc: {n} files");
    let n = journal_seeds(&corpus.join("install_journal"));
    println!("install_journal: {n} files");
}

/// A journal entry with `parts` layer parts, `seq`.
fn entry(seq: u64, parts: usize) -> journal::Journal {
    let mut j = journal::Journal {
        seq,
        bundle: Digest::of(b"toc"),
        manifest: Digest::of(b"manifest"),
        slot: Slot::B,
        claim_seq: 7,
        chunk: 1 << 20,
        parts: Default::default(),
    };
    for i in 0..parts {
        let p = journal::PartProgress { digest: Digest::of(&[i as u8]), partition: 4 + i as u8, chunks: 2 * i as u32 };
        j.parts.push(p).unwrap_or_else(|_| panic!("too many parts"));
    }
    j
}

fn journal_region(a: Option<&journal::Journal>, b: Option<&journal::Journal>) -> Vec<u8> {
    let mut r = vec![0u8; journal::SIZE];
    for (i, j) in [a, b].into_iter().enumerate() {
        if let Some(j) = j {
            let mut block = [0u8; COPY_SIZE];
            journal::encode_copy(j, &mut block).unwrap_or_else(|e| panic!("{e}"));
            r[i * COPY_SIZE..(i + 1) * COPY_SIZE].copy_from_slice(&block);
        }
    }
    r
}

fn journal_seeds(dir: &Path) -> usize {
    let dir = fresh(dir);
    let mut count = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        write(&dir, name, bytes);
        count += 1;
    };
    put("first-entry-copy0", &journal_region(Some(&entry(1, 2)), None));
    put("newer-copy1", &journal_region(Some(&entry(4, 2)), Some(&entry(5, 2))));
    put("newer-copy0", &journal_region(Some(&entry(9, 1)), Some(&entry(8, 1))));
    put("equal-seq", &journal_region(Some(&entry(6, 1)), Some(&entry(6, 3))));
    put("full-parts", &journal_region(Some(&entry(3, journal::MAX_PARTS)), Some(&entry(2, 0))));
    put("seq-wraps", &journal_region(Some(&entry(u64::MAX, 1)), Some(&entry(0, 1))));
    let mut torn = journal_region(Some(&entry(4, 3)), Some(&entry(5, 3)));
    for b in &mut torn[COPY_SIZE + 20..COPY_SIZE + 40] {
        *b ^= 0xff;
    }
    put("torn-copy1", &torn);
    let good = journal_region(Some(&entry(4, 3)), None);
    put("flipped-payload", &flip(&good, 17));
    put("flipped-magic", &flip(&good, 0));
    put("flipped-version", &flip(&good, 8));
    let mut tail = journal_region(Some(&entry(4, 3)), Some(&entry(3, 3)));
    tail.extend_from_slice(&30u16.to_le_bytes());
    put("torn-at-30", &tail);
    put("copy0-only", &journal_region(Some(&entry(1, 2)), None)[..COPY_SIZE]);
    put("blank", &[0u8; journal::SIZE]);
    count
}

/// Compile an appliance file into a manifest, with a made-up digest, size
/// and root hash
/// for each layer (the layers are not built).
fn compile(path: &Path) -> Result<Manifest, String> {
    let app = Appliance::load(path).map_err(|e| e.to_string())?;
    let info: BTreeMap<String, LayerIdentity> = app
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let digest = Digest::of(l.name.as_bytes());
            (l.name.clone(), identity_by_digest(digest, 4096 * (i as u64 + 1), Digest::of(&digest.0)))
        })
        .collect();
    app.to_manifest(path, &info).map_err(|e| e.to_string())
}

fn postcard(m: &Manifest) -> Vec<u8> {
    postcard::to_allocvec(m).unwrap_or_else(|e| panic!("encoding {}: {e}", m.appliance))
}

/// A fresh directory for a corpus: seed files from an earlier run are replaced.
fn fresh(dir: &Path) -> PathBuf {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir.to_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x01;
    v
}

fn manifest_seeds(dir: &Path, manifests: &[(String, Manifest)]) -> usize {
    let dir = fresh(dir);
    let mut count = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        write(&dir, name, bytes);
        count += 1;
    };
    for (name, m) in manifests {
        assert_eq!(m.validate(), Ok(()));
        put(&format!("valid-{name}"), &postcard(m));
    }
    let (name, m) = &manifests[0];
    let bytes = postcard(m);
    // Decodable but invalid: a dependency cycle, a bad network join, a bad name.
    let mut cyc = m.clone();
    if cyc.containers.len() >= 2 {
        let (a, b) = (cyc.containers[0].name.clone(), cyc.containers[1].name.clone());
        let _ = cyc.containers[0].depends_on.push(b);
        let _ = cyc.containers[1].depends_on.push(a);
        put(&format!("invalid-cycle-{name}"), &postcard(&cyc));
    }
    let mut join = m.clone();
    if join.containers.len() >= 2 {
        join.containers[0].network = Network::Join(join.containers[1].name.clone());
        put(&format!("invalid-network-join-{name}"), &postcard(&join));
    }
    let mut bad = m.clone();
    bad.appliance.clear();
    let _ = bad.appliance.push_str("Not-A-Name");
    bad.containers[0].stop.signal = 0;
    put(&format!("invalid-name-and-signal-{name}"), &postcard(&bad));
    // Not decodable: truncated, a flipped byte, trailing garbage is allowed.
    put(&format!("truncated-{name}"), &bytes[..bytes.len() / 2]);
    put(&format!("flipped-{name}"), &flip(&bytes, bytes.len() / 3));
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"trailing bytes");
    put(&format!("trailing-{name}"), &trailing);
    // More containers than MAX_CONTAINERS claimed by the length prefix.
    let mut empty = m.clone();
    empty.containers.clear();
    let mut over = postcard(&empty);
    if over.last() == Some(&0) {
        over.pop();
        over.push(17);
        over.extend_from_slice(&bytes[bytes.len() / 2..]);
        put("over-capacity-containers", &over);
    }
    put("empty", b"");
    count
}

fn envelope_seeds(dir: &Path, manifests: &[(String, Manifest)]) -> usize {
    let dir = fresh(dir);
    let key = test_signing_key();
    let pk = test_public_key();
    let mut count = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        write(&dir, name, bytes);
        count += 1;
    };
    for (name, m) in manifests {
        let env = envelope::seal_manifest(m, &key).unwrap_or_else(|e| panic!("sealing {name}: {e}"));
        // The fuzz targets' own sealer is the host's, byte for byte.
        let mut mine = Vec::new();
        seal_into(&postcard(m), &key, &mut mine);
        assert_eq!(mine, env, "cairn_fuzz::seal_into differs from envelope::seal_manifest");
        assert_eq!(envelope::open_manifest(&env, &[pk]).as_ref(), Ok(m));
        put(&format!("valid-{name}"), &env);
    }
    let (name, m) = &manifests[0];
    let env = envelope::seal_manifest(m, &key).unwrap_or_else(|e| panic!("{e}"));
    let len = env.len();
    // A partition is larger than its envelope: trailing bytes are ignored.
    let mut padded = env.clone();
    padded.extend_from_slice(&[0u8; 512]);
    assert!(envelope::open_manifest(&padded, &[pk]).is_ok());
    put(&format!("valid-padded-{name}"), &padded);
    // Signed, but the payload is not a valid manifest.
    let mut cyc = m.clone();
    if cyc.containers.len() >= 2 {
        let (a, b) = (cyc.containers[0].name.clone(), cyc.containers[1].name.clone());
        let _ = cyc.containers[0].depends_on.push(b);
        let _ = cyc.containers[1].depends_on.push(a);
        let signed = envelope::seal(&postcard(&cyc), &key).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(envelope::open_manifest(&signed, &[pk]), Err(OpenError::Invalid(_))));
        put(&format!("signed-invalid-{name}"), &signed);
    }
    // Signed, but bytes follow the manifest inside the payload: refused.
    let mut trailing = postcard(m);
    trailing.extend_from_slice(b"tail");
    let signed = envelope::seal(&trailing, &key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(envelope::open_manifest(&signed, &[pk]), Err(OpenError::TrailingBytes(4)));
    put(&format!("signed-trailing-{name}"), &signed);
    let signed = envelope::seal(b"not postcard at all", &key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(envelope::open_manifest(&signed, &[pk]), Err(OpenError::Decode));
    put("signed-garbage", &signed);
    // Signed by a key the device does not trust.
    let other = SigningKey::from_bytes(&OTHER_KEY_SEED);
    put(&format!("untrusted-key-{name}"), &envelope::seal_manifest(m, &other).unwrap_or_else(|e| panic!("{e}")));
    // Broken: truncated in the signature and in the header, flipped bits in
    // the payload and in the signature, a length past MAX_PAYLOAD, no magic.
    put(&format!("truncated-signature-{name}"), &env[..len - 10]);
    put("truncated-header", &env[..12]);
    put(&format!("flipped-payload-{name}"), &flip(&env, envelope::HEADER_LEN + 5));
    put(&format!("flipped-signature-{name}"), &flip(&env, len - 1));
    let mut huge = env.clone();
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    put("length-too-large", &huge);
    put("erased", &[0xff; 128]);
    count
}

fn state(seq: u64, slots: usize) -> BootState {
    let layer_slots = (0..slots.min(MAX_LAYER_SLOTS))
        .map(|i| LayerSlot { digest: Digest::of(&[i as u8]), partition: i as u8 + 1 })
        .collect();
    let mut s = BootState::factory(layer_slots);
    s.seq = seq;
    s
}

fn region(a: Option<&BootState>, b: Option<&BootState>) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_SIZE];
    for (i, s) in [a, b].into_iter().enumerate() {
        if let Some(s) = s {
            let mut block = [0u8; COPY_SIZE];
            bootstate::encode_copy(s, &mut block).unwrap_or_else(|e| panic!("{e}"));
            r[i * COPY_SIZE..(i + 1) * COPY_SIZE].copy_from_slice(&block);
        }
    }
    r
}

fn bootstate_seeds(dir: &Path) -> usize {
    let dir = fresh(dir);
    let mut count = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        write(&dir, name, bytes);
        count += 1;
    };
    let factory = state(1, 3);
    put("factory-copy0", &region(Some(&factory), None));
    put("newer-copy1", &region(Some(&state(4, 3)), Some(&state(5, 3))));
    put("newer-copy0", &region(Some(&state(9, 2)), Some(&state(8, 2))));
    put("equal-seq", &region(Some(&state(6, 1)), Some(&state(6, 2))));
    let mut trial = state(12, MAX_LAYER_SLOTS);
    trial.status = [SlotStatus::Good, SlotStatus::Ready];
    trial.trial = Some(Trial { slot: Slot::B, tries_left: 3, boot_entry: Some(Slot::B) });
    trial.rollback_floor = 7;
    let mut prev = trial.clone();
    prev.seq = 11;
    prev.status = [SlotStatus::Good, SlotStatus::Installing];
    prev.trial = None;
    put("trial-full-slots", &region(Some(&trial), Some(&prev)));
    put("large-seq-varint", &region(Some(&state(1 << 60, 0)), None));
    // A power cut half way through writing copy 1: its tail is garbage.
    let mut torn = region(Some(&state(4, 3)), Some(&state(5, 3)));
    for b in &mut torn[COPY_SIZE + 20..COPY_SIZE + 40] {
        *b ^= 0xff;
    }
    put("torn-copy1", &torn);
    let good = region(Some(&state(4, 3)), None);
    put("flipped-payload", &flip(&good, 17));
    put("flipped-magic", &flip(&good, 0));
    // The two bytes after the record pick where the target tears a write.
    let mut tail = region(Some(&state(4, 3)), Some(&state(3, 3)));
    tail.extend_from_slice(&40u16.to_le_bytes());
    put("torn-at-40", &tail);
    put("copy0-only", &region(Some(&factory), None)[..COPY_SIZE]);
    put("too-short", &region(Some(&factory), None)[..100]);
    put("blank", &[0u8; RECORD_SIZE]);
    // The factory's first record (CAIRNBS1: seq, active, trial, tries,
    // floor, layer slots), which still reads as its slot committed.
    let v1 = (1u64, Slot::A, false, 0u8, 0u64, factory.layer_slots.iter().copied().collect::<Vec<_>>());
    let body = postcard::to_allocvec(&v1).unwrap_or_else(|e| panic!("{e}"));
    let mut copy = vec![0u8; COPY_SIZE];
    copy[..8].copy_from_slice(&bootstate::MAGIC_V1);
    copy[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    copy[12..16].copy_from_slice(&crc32(&body).to_le_bytes());
    copy[16..16 + body.len()].copy_from_slice(&body);
    put("factory-v1-copy0", &copy);
    count
}

/// A TOC for `m` carrying the layers `carry` (indices), the parts laid out
/// from offset 4096 as the bundle builder does (the TOC is smaller).
fn toc_for(m: &Manifest, carry: &[usize], boot: bool) -> Toc {
    let envelope = envelope::seal_manifest(m, &test_signing_key()).unwrap_or_else(|e| panic!("{e}"));
    let (mut at, mut end) = (4096u64, 0u64);
    let mut part = |size: u64, seed: &[u8]| {
        let p = Part { offset: at, size, sha256: Digest::of(seed) };
        end = at + size;
        at = bundle::align_up(end).unwrap_or(u64::MAX);
        p
    };
    let manifest = part(envelope.len() as u64, &envelope);
    let layers = carry
        .iter()
        .filter_map(|i| m.layers.get(*i))
        .map(|l| LayerPart { digest: l.digest, part: part(l.verity.partition_bytes(), &l.digest.0) })
        .collect();
    let boot_image = boot.then(|| part(20000, b"boot"));
    Toc {
        compatible: m.compatible.clone(),
        version: m.version,
        base_version: (carry.len() < m.layers.len()).then_some(m.version.saturating_sub(1)),
        total_size: end,
        manifest,
        layers,
        boot_image,
    }
}

fn bundle_seeds(dir: &Path, manifests: &[(String, Manifest)]) -> usize {
    let dir = fresh(dir);
    let key = test_signing_key();
    let pk = test_public_key();
    let mut count = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        write(&dir, name, bytes);
        count += 1;
    };
    // Sealed without the bound checks, so invalid TOCs get signed too.
    let raw = |t: &Toc| {
        let payload = postcard::to_allocvec(t).unwrap_or_else(|e| panic!("{e}"));
        envelope::seal_as(&payload, &key, &bundle::TOC_MAGIC, bundle::MAX_TOC_PAYLOAD).unwrap_or_else(|e| panic!("{e}"))
    };
    for (name, m) in manifests {
        let all: Vec<usize> = (0..m.layers.len()).collect();
        let t = toc_for(m, &all, false);
        let head = bundle::seal_toc(&t, &key).unwrap_or_else(|e| panic!("sealing the TOC of {name}: {e}"));
        // The fuzz targets' own sealer is the host's, byte for byte.
        let mut mine = Vec::new();
        let payload = postcard::to_allocvec(&t).unwrap_or_else(|e| panic!("{e}"));
        seal_into_as(&payload, &key, &bundle::TOC_MAGIC, bundle::MAX_TOC_PAYLOAD, &mut mine);
        assert_eq!(mine, head, "cairn_fuzz::seal_into_as differs from bundle::seal_toc");
        assert_eq!(bundle::open_toc(&head, &[pk]), Ok(t.clone()));
        assert_eq!(bundle::check_manifest(&t, m), Ok(vec![]));
        put(&format!("valid-full-{name}"), &head);
    }
    let (name, m) = &manifests[0];
    let thin = toc_for(m, &[m.layers.len() - 1], true);
    let head = bundle::seal_toc(&thin, &key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bundle::check_manifest(&thin, m).map(|v| v.len()), Ok(m.layers.len() - 1));
    put(&format!("valid-thin-boot-{name}"), &head);
    // A head is read whole: bytes after the TOC are the first parts.
    let mut padded = head.clone();
    padded.resize(8192, 0);
    assert!(bundle::open_toc(&padded, &[pk]).is_ok());
    put(&format!("valid-padded-{name}"), &padded);
    // Signed, but a rule broken.
    let all: Vec<usize> = (0..m.layers.len()).collect();
    let t = toc_for(m, &all, true);
    let broken: [(&str, Box<dyn Fn(&mut Toc)>); 6] = [
        ("misaligned", Box::new(|t: &mut Toc| t.manifest.offset += 512)),
        ("inside-toc", Box::new(|t: &mut Toc| t.manifest.offset = 0)),
        ("overlap", Box::new(|t: &mut Toc| t.manifest.size += 8192)),
        ("outside-file", Box::new(|t: &mut Toc| t.total_size -= 1)),
        ("duplicate-layer", Box::new(|t: &mut Toc| {
            if let Some(first) = t.layers.first().copied() {
                let mut again = first;
                again.part.offset = t.total_size;
                t.total_size = again.part.end();
                t.boot_image = None;
                t.layers.push(again);
            }
        })),
        ("bad-compatible", Box::new(|t: &mut Toc| t.compatible = "Not Valid!".into())),
    ];
    for (what, change) in broken {
        let mut b = t.clone();
        change(&mut b);
        let sealed = raw(&b);
        assert!(bundle::open_toc(&sealed, &[pk]).is_err(), "{what} opened");
        put(&format!("signed-{what}"), &sealed);
    }
    let mut trailing = postcard::to_allocvec(&t).unwrap_or_else(|e| panic!("{e}"));
    trailing.extend_from_slice(b"tail");
    let sealed = envelope::seal_as(&trailing, &key, &bundle::TOC_MAGIC, bundle::MAX_TOC_PAYLOAD)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bundle::open_toc(&sealed, &[pk]), Err(bundle::BundleError::TrailingBytes(4)));
    put("signed-trailing", &sealed);
    // Signed by a key the device does not trust; a manifest envelope.
    let other = SigningKey::from_bytes(&OTHER_KEY_SEED);
    put("untrusted-key", &bundle::seal_toc(&t, &other).unwrap_or_else(|e| panic!("{e}")));
    put("manifest-envelope", &envelope::seal_manifest(m, &key).unwrap_or_else(|e| panic!("{e}")));
    let good = bundle::seal_toc(&t, &key).unwrap_or_else(|e| panic!("{e}"));
    put("flipped-payload", &flip(&good, envelope::HEADER_LEN + 3));
    put("truncated", &good[..good.len() - 10]);
    count
}

/// crc32 (IEEE), bitwise.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
