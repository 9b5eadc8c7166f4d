//! A simulated disk that loses power at every write and every flush, and
//! the invariants the install sequence, the trial and the record writer
//! keep through every cut.
//!
//! The disk: a bundle source, `cairn-state`, two manifest slots and six
//! layer partitions. A write lands in a volatile cache (reads see it); a
//! flush of a target makes its cached writes durable. Power is cut while
//! operation `k` is in flight (a write, a flush, or the mount of a booted
//! slot), for every `k` of a run; the disk after the cut is the durable
//! bytes plus a subset of the unflushed writes, applied in order: all of
//! them, none, and seeded random subsets where each write is kept, dropped,
//! or torn (each of its 512-byte sectors kept or not).
//!
//! After every cut: the record reads (both copies never lost) and is no
//! older than the last durable one; the slot `plan_boot` picks opens as a
//! signed manifest whose layers are on their partitions (the committed v1,
//! or v2 on trial or committed: never a slot being installed); the
//! committed slot's manifest and layer partitions are byte-identical to
//! before; the floor is 0 until v2 commits and 2 after; and booting on from
//! that disk finishes the update (install again if needed, trial, commit)
//! within three boots. Every slot marked good verifies (the init may fall
//! back to it). Every boot spends its try durably before it mounts. Two
//! updates are swept: v1 on A to v2 on B, then v2 to v3 on A, which
//! overwrites a partition of v1's.
//!
//! Boot entries: with a boot image in the bundle, the ESP's two entries are
//! modelled too (a name each: absent, pending, or an entry with its
//! counter, or blessed; an image; the release it sorts by), and a loader
//! that starts the entry systemd-boot would (tries left first, then the
//! newest release) and counts its try. After every cut the entry the
//! running system boots from is unchanged, an entry with tries exists only
//! while a trial (or a commit not yet blessed) expects it, and booting on
//! ends with the new entry blessed.
//!
//! Resume: the install after a cut reads the install journal; no resumed
//! part may fail its read back (the journal counts only flushed chunks),
//! and each layer part is written again from at most one chunk before
//! where the bytes flushed before the cut ended (bytes written are counted
//! per partition). Journal writes are unflushed writes like any other:
//! kept, dropped or torn at each cut.

use super::*;
use crate::bootstate::{read_record, BootState, SlotStatus};
use crate::bundle::{align_up, seal_toc, LayerPart, Part};
use crate::envelope::seal_manifest;
use crate::manifest::tests::{container, manifest, test_verity};
use crate::update::{commit, fail_trial, plan_boot, BootKind};
use ed25519_dalek::SigningKey;
use std::format;
use std::string::{String, ToString};
use std::vec;

const SECTOR: usize = 512;
const LAYER_PARTS: u8 = 6;
const LAYER_BYTES: usize = 32 << 10;
const SLOT_BYTES: usize = 16 << 10;
const IMAGE_BYTES: usize = 12 << 10;
const PRODUCT: &str = "cairn-test";
/// Random subsets of the unflushed writes tried at each cut.
const RANDOM_SUBSETS: usize = 24;

/// A deliberately broken installer or disk, to show the simulator catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Flushes of a manifest slot do nothing: the stage record can be
    /// durable while the manifest is not.
    NoManifestFlush,
    /// A record copy is written over the copy it should keep (the first
    /// write of a run lands in place over the newest copy).
    RecordInPlace,
    /// The trial mounts its slot before the try is durable.
    MountBeforeTry,
    /// A layer partition's flush lands only after the next flush of
    /// `cairn-state`: the journal entry counting a chunk is durable before
    /// the chunk is (the installer journalling before its fdatasync).
    JournalBeforeData,
    /// The boot image is written straight under its entry name, on trial,
    /// instead of a pending name renamed after the stage.
    ImageNamedAtOnce,
    /// A failed trial writes the record before it marks its entry bad.
    RollbackRecordFirst,
}

/// A boot entry's name on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryName {
    /// No file.
    Absent,
    /// The installer's pending name: not an entry.
    Pending,
    /// `cairn-X+N.efi` with `Some(N)` tries left, `cairn-X.efi` blessed.
    Named(Option<u8>),
}

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SimError {
    /// The power is off.
    Cut,
    /// Outside the target.
    OutOfRange(Target, u64, usize),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

fn index(t: Target) -> usize {
    match t {
        Target::Source => 0,
        Target::State => 1,
        Target::Manifest(Slot::A) => 2,
        Target::Manifest(Slot::B) => 3,
        Target::Layer(n) => 3 + n as usize,
        Target::BootImage(s) => 4 + LAYER_PARTS as usize + s as usize,
    }
}

#[derive(Clone)]
struct Disk {
    /// What survives a power cut, per target.
    durable: Vec<Vec<u8>>,
    /// What reads see: durable plus the cache.
    current: Vec<Vec<u8>>,
    /// Unflushed writes, in order: target, offset, bytes.
    cache: Vec<(usize, u64, Vec<u8>)>,
    /// Operations (write, flush, mount) started so far.
    ops: usize,
    /// The operation during which the power goes.
    cut_at: Option<usize>,
    off: bool,
    bug: Bug,
    /// Record copies written so far.
    record_writes: usize,
    /// Per target: where the writes made durable by a flush end (the
    /// installer writes each partition from its start).
    flushed_end: Vec<u64>,
    /// Per target: bytes written since the power came back.
    written: Vec<u64>,
    /// Layer flushes the `JournalBeforeData` bug holds back.
    held: Vec<usize>,
    /// The installer's progress, one line per step, since the power came back.
    events: Vec<String>,
    /// Each layer part written since the power came back: target, bytes.
    parts_written: Vec<(usize, u64)>,
    /// Chunks resumed installs skipped since the power came back.
    skipped: u64,
    /// The ESP's entries: each one's name and release (the image bytes are
    /// targets like the partitions). Name changes are durable when done
    /// (the device syncs the ESP after each).
    names: [EntryName; 2],
    releases: [u64; 2],
    /// The entry the loader last started.
    booted: Option<Slot>,
    /// The release an install in progress writes.
    installing: u64,
}

impl Disk {
    /// Start operation `ops`: false if the power is (now) off.
    fn start(&mut self) -> bool {
        if self.off {
            return false;
        }
        let k = self.ops;
        self.ops += 1;
        if self.cut_at == Some(k) {
            self.off = true;
        }
        true
    }

    /// The disk after the power came back: durable bytes plus the chosen
    /// unflushed writes.
    /// `keep` says, for each 512-byte sector of a write, how many of its
    /// first bytes landed: 0 (none), 512 (all) or a torn sector.
    fn after_cut(&self, keep: &mut dyn FnMut(&[u8]) -> Vec<usize>) -> Disk {
        let mut durable = self.durable.clone();
        for (t, offset, data) in &self.cache {
            let sectors = keep(data);
            for (i, sector) in data.chunks(SECTOR).enumerate() {
                let landed = sectors[i].min(sector.len());
                let at = *offset as usize + i * SECTOR;
                durable[*t][at..at + landed].copy_from_slice(&sector[..landed]);
            }
        }
        Disk {
            current: durable.clone(),
            durable,
            cache: vec![],
            ops: 0,
            cut_at: None,
            off: false,
            bug: self.bug,
            record_writes: self.record_writes,
            flushed_end: self.flushed_end.clone(),
            written: vec![0; self.written.len()],
            held: vec![],
            events: vec![],
            parts_written: vec![],
            skipped: 0,
            names: self.names,
            releases: self.releases,
            booted: self.booted,
            installing: 0,
        }
    }

    /// Entry `slot` as its name says.
    fn entry(&self, slot: Slot) -> Option<crate::bootentry::Entry> {
        match self.names[slot as usize] {
            EntryName::Named(None) => Some(crate::bootentry::Entry::blessed(slot)),
            EntryName::Named(Some(t)) => Some(crate::bootentry::Entry::trial(slot, u32::from(t))),
            EntryName::Absent | EntryName::Pending => None,
        }
    }

    /// Rename an entry (an operation: the power may go while it lands;
    /// it lands).
    fn rename(&mut self, slot: Slot, name: EntryName) -> Result<(), SimError> {
        if !self.start() {
            return Err(SimError::Cut);
        }
        self.names[slot as usize] = name;
        if self.off {
            Err(SimError::Cut)
        } else {
            Ok(())
        }
    }

    /// The loader: start the entry systemd-boot would (tries left before
    /// none left, then the newest release), counting its try first.
    fn load(&mut self) -> Result<Slot, Stop> {
        let pick = [Slot::A, Slot::B]
            .into_iter()
            .filter(|s| matches!(self.names[*s as usize], EntryName::Named(_)))
            .min_by_key(|s| {
                (self.names[*s as usize] == EntryName::Named(Some(0)), u64::MAX - self.releases[*s as usize])
            })
            .ok_or_else(|| Stop::Bad("the ESP holds no boot entry".into()))?;
        if let EntryName::Named(Some(t)) = self.names[pick as usize] {
            if t > 0 {
                self.rename(pick, EntryName::Named(Some(t - 1))).map_err(cut_or("the loader's count"))?;
            }
        }
        self.booted = Some(pick);
        Ok(pick)
    }

    /// Make the cached writes to target `i` durable.
    fn make_durable(&mut self, i: usize) {
        let mut keep = vec![];
        for (j, offset, data) in self.cache.drain(..) {
            if j == i {
                let at = offset as usize;
                self.durable[i][at..at + data.len()].copy_from_slice(&data);
                self.flushed_end[i] = self.flushed_end[i].max(offset + data.len() as u64);
            } else {
                keep.push((j, offset, data));
            }
        }
        self.cache = keep;
    }

    /// A mount of a booted slot: one more point where the power can go.
    fn mount(&mut self) -> Result<(), SimError> {
        if self.start() && !self.off {
            Ok(())
        } else {
            Err(SimError::Cut)
        }
    }

    fn state_offset(&mut self, offset: u64, len: usize) -> u64 {
        // The bug: a single copy is written (and read back) where the
        // newest copy is, not over the older one.
        if self.bug == Bug::RecordInPlace && len == COPY_SIZE && offset < RECORD_SIZE as u64 {
            match read_record(&self.current[index(Target::State)]) {
                Ok((copy, _)) => (copy * COPY_SIZE) as u64,
                Err(_) => offset,
            }
        } else {
            offset
        }
    }
}

impl Storage for Disk {
    type Error = SimError;

    fn read(&mut self, t: Target, offset: u64, buf: &mut [u8]) -> Result<usize, SimError> {
        if self.off {
            return Err(SimError::Cut);
        }
        let data = &self.current[index(t)];
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn read_direct(&mut self, t: Target, offset: u64, buf: &mut [u8]) -> Result<usize, SimError> {
        assert_eq!((offset % BLOCK as u64, buf.len() % BLOCK), (0, 0), "unaligned direct read of {t}");
        let offset = if t == Target::State { self.state_offset(offset, buf.len()) } else { offset };
        self.read(t, offset, buf)
    }

    fn write(&mut self, t: Target, offset: u64, data: &[u8]) -> Result<(), SimError> {
        let mut offset = offset;
        if t == Target::State && data.len() == COPY_SIZE && offset < RECORD_SIZE as u64 {
            self.record_writes += 1;
            offset = self.state_offset(offset, data.len());
        }
        if !self.start() {
            return Err(SimError::Cut);
        }
        let i = index(t);
        let end = offset as usize + data.len();
        if end > self.current[i].len() {
            return Err(SimError::OutOfRange(t, offset, data.len()));
        }
        self.current[i][offset as usize..end].copy_from_slice(data);
        self.cache.push((i, offset, data.to_vec()));
        self.written[i] += data.len() as u64;
        // A write in flight when the power goes may land in part.
        if self.off {
            Err(SimError::Cut)
        } else {
            Ok(())
        }
    }

    fn flush(&mut self, t: Target) -> Result<(), SimError> {
        if !self.start() || self.off {
            return Err(SimError::Cut);
        }
        if self.bug == Bug::NoManifestFlush && matches!(t, Target::Manifest(_)) {
            return Ok(());
        }
        let i = index(t);
        if self.bug == Bug::JournalBeforeData && matches!(t, Target::Layer(_)) {
            self.held.push(i);
            return Ok(());
        }
        self.make_durable(i);
        if t == Target::State && !self.held.is_empty() {
            // The held layer flushes: one more operation, after the state.
            if !self.start() || self.off {
                return Err(SimError::Cut);
            }
            for i in std::mem::take(&mut self.held) {
                self.make_durable(i);
            }
        }
        Ok(())
    }

    fn begin_entry(&mut self, slot: Slot) -> Result<(), SimError> {
        let name = if self.bug == Bug::ImageNamedAtOnce { EntryName::Named(Some(3)) } else { EntryName::Pending };
        self.releases[slot as usize] = self.installing;
        // Unlink and create: the image is empty from here on.
        let i = index(Target::BootImage(slot));
        self.cache.retain(|(t, _, _)| *t != i);
        self.current[i].fill(0);
        self.durable[i].fill(0);
        self.rename(slot, name)
    }

    fn finish_entry(&mut self, slot: Slot, tries: u8) -> Result<(), SimError> {
        match self.names[slot as usize] {
            EntryName::Pending => self.rename(slot, EntryName::Named(Some(tries))),
            _ if self.bug == Bug::ImageNamedAtOnce => Ok(()),
            _ => Err(SimError::OutOfRange(Target::BootImage(slot), 0, 0)),
        }
    }
}

/// A layer and its partition's bytes.
type LayerBytes = (Layer, Vec<u8>);

/// A layer and its partition bytes (image, zero padding, a fake tree).
fn layer(name: &str, fill: u8, size: u64) -> LayerBytes {
    let image: Vec<u8> = (0..size).map(|i| fill ^ (i as u8).wrapping_mul(31)).collect();
    let verity = test_verity(size);
    let mut part = image.clone();
    part.resize(verity.hash_offset as usize, 0);
    part.resize(verity.partition_bytes() as usize, fill ^ 0x5a);
    (Layer { name: name.into(), digest: Digest::of(&image), size, verity }, part)
}

/// The thin bundle of `m`, carrying `carried`, signed with `key`.
fn bundle(key: &SigningKey, m: &Manifest, carried: &[&(Layer, Vec<u8>)], image: Option<&[u8]>) -> Vec<u8> {
    let env = seal_manifest(m, key).unwrap();
    let mut off = 8192u64;
    let mpart = Part { offset: off, size: env.len() as u64, sha256: Digest::of(&env) };
    off = align_up(off + env.len() as u64).unwrap();
    let mut layers = vec![];
    for (l, bytes) in carried {
        let part = Part { offset: off, size: bytes.len() as u64, sha256: Digest::of(bytes) };
        layers.push(LayerPart { digest: l.digest, part });
        off = align_up(off + bytes.len() as u64).unwrap();
    }
    let toc = Toc {
        compatible: PRODUCT.into(),
        version: m.version,
        base_version: Some(m.version - 1),
        total_size: off,
        manifest: mpart,
        layers: layers.clone(),
        boot_image: None,
    };
    let mut toc = toc;
    if let Some(image) = image {
        toc.boot_image = Some(Part { offset: off, size: image.len() as u64, sha256: Digest::of(image) });
        off = align_up(off + image.len() as u64).unwrap();
        toc.total_size = off;
    }
    let head = seal_toc(&toc, key).unwrap();
    assert!(head.len() <= 8192);
    let mut source = vec![0u8; off as usize];
    source[..head.len()].copy_from_slice(&head);
    source[8192..8192 + env.len()].copy_from_slice(&env);
    for (lp, (_, bytes)) in layers.iter().zip(carried) {
        source[lp.part.offset as usize..][..bytes.len()].copy_from_slice(bytes);
    }
    if let (Some(p), Some(image)) = (toc.boot_image, image) {
        source[p.offset as usize..][..image.len()].copy_from_slice(image);
    }
    source
}

/// The boot image of release `version`.
fn image_of(version: u64) -> Vec<u8> {
    (0..IMAGE_BYTES - 1000).map(|i| (i as u8).wrapping_mul(7) ^ version as u8).collect()
}

/// One update: the disk before it, and what must hold through it.
struct Fixture {
    key: SigningKey,
    /// The disk before the install, the bundle as its source.
    start: Disk,
    partitions: Vec<Partition>,
    /// The committed slot before the update, and the version it installs.
    from: Slot,
    to: u64,
    /// The committed slot's partitions: never written until it commits.
    protected: Vec<Target>,
    /// The floor before and after the commit.
    floors: (u64, u64),
    /// The next update's manifest and the layers its bundle carries.
    next: Option<(Manifest, Vec<LayerBytes>)>,
    /// Whether the bundles carry a boot image.
    images: bool,
    /// The boot entry the committed system starts from (never written),
    /// and the one the update's image goes to.
    entries: (Slot, Slot),
}

impl Fixture {
    /// v1 (layers base, app, data on 1-3) committed on A, a bundle of v2
    /// (base, a new app, extra) as the source.
    fn new(bug: Bug) -> Fixture {
        Fixture::with(bug, false)
    }

    /// [`Fixture::new`], the bundles carrying a boot image: the factory
    /// ESP holds entry A blessed (release 1), the image goes to entry B.
    fn with(bug: Bug, images: bool) -> Fixture {
        let key = SigningKey::from_bytes(&[1; 32]);
        let base = layer("base", 1, 8192);
        let app1 = layer("app", 2, 8192);
        let data = layer("data", 3, 4096);
        let app2 = layer("app", 4, 12288);
        let extra = layer("extra", 5, 8192);
        let tools = layer("tools", 6, 8192);
        let more = layer("more", 7, 4096);
        let mut v1 = manifest(&[container("app", &[])]);
        v1.layers = vec![base.0.clone(), app1.0.clone(), data.0.clone()];
        let mut v2 = manifest(&[container("app", &[])]);
        v2.version = 2;
        v2.update = crate::manifest::UpdatePolicy::for_version(2);
        v2.layers = vec![base.0.clone(), app2.0.clone(), extra.0.clone()];
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.update = crate::manifest::UpdatePolicy::for_version(3);
        v3.layers = vec![base.0.clone(), app2.0.clone(), tools.0.clone(), more.0.clone()];
        let source = bundle(&key, &v2, &[&app2, &extra], images.then(|| image_of(2)).as_deref());

        // The factory: both record copies, slot A, layers on 1-3.
        let mut state = vec![0u8; RECORD_SIZE + crate::journal::SIZE];
        let factory = BootState::factory(BootState::factory_layout(&v1));
        let mut block = [0u8; COPY_SIZE];
        bootstate::encode_copy(&factory, &mut block).unwrap();
        state[..COPY_SIZE].copy_from_slice(&block);
        state[COPY_SIZE..RECORD_SIZE].copy_from_slice(&block);
        let mut slot_a = seal_manifest(&v1, &key).unwrap();
        slot_a.resize(SLOT_BYTES, 0);
        let mut targets = vec![source, state, slot_a, vec![0u8; SLOT_BYTES]];
        for n in 1..=LAYER_PARTS {
            let mut p = vec![0u8; LAYER_BYTES];
            if let Some((_, bytes)) = [&base, &app1, &data].get(n as usize - 1) {
                p[..bytes.len()].copy_from_slice(bytes);
            }
            targets.push(p);
        }
        targets.push(image_of(1));
        targets.push(vec![0u8; IMAGE_BYTES]);
        let n = targets.len();
        let start = Disk {
            current: targets.clone(),
            durable: targets,
            cache: vec![],
            ops: 0,
            cut_at: None,
            off: false,
            bug,
            record_writes: 0,
            flushed_end: vec![0; n],
            written: vec![0; n],
            held: vec![],
            events: vec![],
            parts_written: vec![],
            skipped: 0,
            names: [EntryName::Named(None), EntryName::Absent],
            releases: [1, 0],
            booted: Some(Slot::A),
            installing: 0,
        };
        let partitions = (1..=LAYER_PARTS).map(|number| Partition { number, bytes: LAYER_BYTES as u64 }).collect();
        let protected = vec![Target::Manifest(Slot::A), Target::Layer(1), Target::Layer(2), Target::Layer(3)];
        Fixture {
            key,
            start,
            partitions,
            from: Slot::A,
            to: 2,
            protected,
            floors: (0, 2),
            next: Some((v3, vec![tools, more])),
            images,
            entries: (Slot::A, Slot::B),
        }
    }

    /// The next update: v2 committed on B (after this fixture's update,
    /// with no cut), a bundle of v3 (base, app kept; tools, more new) as the
    /// source. Its layers go to the empty partition 6 and to partition 2,
    /// which held v1's app: v2's partitions 1, 4 and 5 are protected.
    fn second(&self) -> Fixture {
        let mut d = self.staged();
        settle(self, &mut d).unwrap();
        let (v3, carried) = self.next.clone().unwrap();
        let image = self.images.then(|| image_of(3));
        let source = bundle(&self.key, &v3, &carried.iter().collect::<Vec<_>>(), image.as_deref());
        d.current[index(Target::Source)] = source.clone();
        d.durable[index(Target::Source)] = source;
        d.ops = 0;
        let protected = vec![Target::Manifest(Slot::B), Target::Layer(1), Target::Layer(4), Target::Layer(5)];
        Fixture {
            key: self.key.clone(),
            start: d,
            partitions: self.partitions.clone(),
            from: Slot::B,
            to: 3,
            protected,
            floors: (2, 3),
            next: None,
            images: self.images,
            // v2's image was blessed on B: v3's overwrites A.
            entries: if self.images { (Slot::B, Slot::A) } else { (Slot::A, Slot::B) },
        }
    }

    fn keys(&self) -> [PublicKey; 1] {
        [self.key.verifying_key().to_bytes()]
    }

    /// Install the bundle from `d` as the device does after reading the
    /// record at boot (the committed manifest read from its slot).
    fn install(&self, d: &mut Disk, record: &mut Record) -> Result<Slot, InstallError<SimError>> {
        let keys = self.keys();
        let slot = &d.current[index(Target::Manifest(record.state.committed))];
        let committed = envelope::open_manifest(slot, &keys).unwrap();
        let cx = Install {
            keys: &keys,
            product: PRODUCT,
            committed: &committed,
            partitions: &self.partitions,
            chunk: BLOCK,
            booted_entry: d.booted.and_then(|b| d.entry(b)),
        };
        d.installing = self.to;
        let (mut events, mut parts, mut skipped) = (vec![], vec![], 0);
        let r = install(d, &cx, record, |p| {
            events.push(describe(&p));
            match p {
                Progress::LayerWritten { partition, bytes, .. } => parts.push((index(partition), bytes)),
                Progress::Resumed { chunks_skipped, .. } => skipped += u64::from(chunks_skipped),
                _ => {}
            }
        });
        d.events.extend(events);
        d.parts_written.extend(parts);
        d.skipped += skipped;
        r
    }

    /// The start disk with the update staged (no cut).
    fn staged(&self) -> Disk {
        let mut d = self.start.clone();
        let mut rec = Record::read(&mut d).unwrap();
        self.install(&mut d, &mut rec).unwrap();
        d
    }
}

/// One line per step of an install.
fn describe(p: &Progress<'_>) -> String {
    match *p {
        Progress::Verified { reuse, write, bytes, .. } => format!("verified reuse={reuse} write={write} bytes={bytes}"),
        Progress::Claimed { slot, seq } => format!("claimed slot={slot} seq={seq}"),
        Progress::Resumed { layer, partition, chunks_skipped, chunks } => {
            format!("resumed {} {partition} skipped={chunks_skipped}/{chunks}", layer.name)
        }
        Progress::ResumeFailed { partition } => format!("resume-failed {partition}"),
        Progress::LayerWritten { layer, partition, bytes } => format!("layer {} {partition} {bytes}", layer.name),
        Progress::ManifestWritten { slot, bytes } => format!("manifest slot={slot} bytes={bytes}"),
        Progress::Staged { slot, version, tries, seq } => format!("staged {slot} v{version} tries={tries} seq={seq}"),
        Progress::BootImageWritten { entry, bytes } => format!("boot-image entry={entry} bytes={bytes}"),
        Progress::EntryNamed { entry, tries } => format!("entry-named {entry} tries={tries}"),
    }
}

/// Why a run stopped.
#[derive(Debug)]
#[allow(dead_code)] // Bad's text is read through Debug
enum Stop {
    Cut,
    Bad(String),
}

fn cut_or<E: fmt::Debug>(what: &'static str) -> impl Fn(E) -> Stop {
    move |e| {
        let text = format!("{e:?}");
        if text.contains("Cut") {
            Stop::Cut
        } else {
            Stop::Bad(format!("{what}: {text}"))
        }
    }
}

struct Booted {
    slot: Slot,
    kind: BootKind,
    manifest: Manifest,
    record: Record,
    /// The boot entry the loader started.
    entry: Slot,
}

/// Boot as the loader and `cairn-init` do: the loader starts an entry
/// (counting its try); the init reads the record, names a staged entry
/// left unnamed and restarts (`None`), or plans, writes what the plan
/// writes (a try spent, a trial ended), then mounts: the slot's manifest
/// must open and each of its layers be on its partition.
fn boot(fx: &Fixture, d: &mut Disk) -> Result<Option<Booted>, Stop> {
    let entry = d.load()?;
    let mut record = Record::read(d).map_err(|e| Stop::Bad(format!("the record is lost: {e:?}")))?;
    let pending = |s: Slot| d.names[s as usize] == EntryName::Pending;
    if let Some(e) = crate::update::entry_to_finish(&record.state, Some(entry), pending) {
        let tries = record.state.trial.map_or(0, |t| t.tries_left);
        d.rename(e, EntryName::Named(Some(tries))).map_err(cut_or("naming the staged entry"))?;
        return Ok(None);
    }
    let plan = plan_boot(&record.state, Some(entry));
    let mount_first = d.bug == Bug::MountBeforeTry && matches!(plan.kind, BootKind::Trial { .. });
    if mount_first {
        mount(d, plan.kind)?;
    }
    if let Some(next) = plan.write {
        record.write(d, next).map_err(cut_or("the boot's record write"))?;
    }
    if !mount_first {
        mount(d, plan.kind)?;
    }
    let manifest = verify_slot(fx, d, &record.state, plan.slot)?;
    Ok(Some(Booted { slot: plan.slot, kind: plan.kind, manifest, record, entry }))
}

/// A boot that must come up (not restart to name an entry).
fn boot_up(fx: &Fixture, d: &mut Disk) -> Result<Booted, Stop> {
    boot(fx, d)?.ok_or_else(|| Stop::Bad("the boot restarted to name an entry".into()))
}

/// Commit the trial `b` booted: the record, then bless its entry if the
/// trial wrote it (as the init does).
fn commit_trial(d: &mut Disk, b: Booted) -> Result<(), Stop> {
    let mut record = b.record;
    let with_entry = record.state.trial.and_then(|t| t.boot_entry) == Some(b.entry);
    let next = commit(&record.state, b.slot, b.manifest.version, b.manifest.update.floor)
        .map_err(|e| Stop::Bad(format!("commit: {e}")))?;
    record.write(d, next).map_err(cut_or("commit"))?;
    if with_entry {
        d.rename(b.entry, EntryName::Named(None)).map_err(cut_or("bless"))?;
    }
    Ok(())
}

/// A boot whose entry is counting but which no trial of the record
/// expects (a commit that landed before its bless): the init blesses it.
fn bless_entry_only(d: &mut Disk, b: &Booted) -> Result<(), Stop> {
    if let EntryName::Named(Some(_)) = d.names[b.entry as usize] {
        d.rename(b.entry, EntryName::Named(None)).map_err(cut_or("bless"))?;
    }
    Ok(())
}

/// Mount the booted slot: one more point where the power can go. Tries
/// drop before mounting: the durable record already holds this boot's try
/// (or the trial's end).
fn mount(d: &mut Disk, kind: BootKind) -> Result<(), Stop> {
    let durable = read_record(&d.durable[index(Target::State)]).map(|(_, s)| s.trial);
    let spent = match kind {
        BootKind::Trial { tries_left } => durable.map(|t| t.map(|t| t.tries_left)) == Ok(Some(tries_left)),
        BootKind::TrialEnded { .. } => durable == Ok(None),
        BootKind::Committed => true,
    };
    if !spent {
        return Err(Stop::Bad(format!(
            "mounting a {kind:?} boot while the durable record is not yet written: {durable:?}"
        )));
    }
    d.mount().map_err(cut_or("mount"))
}

/// The slot's manifest opens and its layers are where the map says.
fn verify_slot(fx: &Fixture, d: &Disk, state: &BootState, slot: Slot) -> Result<Manifest, Stop> {
    let bytes = &d.current[index(Target::Manifest(slot))];
    let m = envelope::open_manifest(bytes, &fx.keys()).map_err(|e| Stop::Bad(format!("slot {slot} boots: {e}")))?;
    for l in &m.layers {
        let p = state.partition_of(&l.digest).ok_or_else(|| Stop::Bad(format!("slot {slot}: {} unmapped", l.name)))?;
        let found = Digest::of(&d.current[index(Target::Layer(p))][..l.size as usize]);
        if found != l.digest {
            return Err(Stop::Bad(format!("slot {slot} boots with layer {} not on cairn-layer-{p:02}", l.name)));
        }
    }
    Ok(m)
}

/// Boot on from `d` with the power on: install if the old version is
/// committed, commit a trial, until the new one is committed. Returns the
/// boots it took.
fn settle(fx: &Fixture, d: &mut Disk) -> Result<usize, Stop> {
    for boots in 1..=3 {
        let Some(b) = boot(fx, d)? else { continue };
        match b.kind {
            BootKind::Trial { .. } => commit_trial(d, b)?,
            BootKind::Committed if b.manifest.version == fx.to => {
                bless_entry_only(d, &b)?;
                let s = &b.record.state;
                if s.rollback_floor != fx.floors.1 || s.status_of(b.slot) != SlotStatus::Good {
                    return Err(Stop::Bad(format!("v{} committed with {s:?}", fx.to)));
                }
                let (kept, target) = fx.entries;
                if fx.images && (b.entry != target || d.names.map(|n| n == EntryName::Named(None)) != [true, true]) {
                    return Err(Stop::Bad(format!(
                        "v{} committed, booted from entry {} with entries {:?}: not the new entry blessed beside entry {kept}",
                        fx.to, b.entry, d.names
                    )));
                }
                return Ok(boots);
            }
            BootKind::Committed | BootKind::TrialEnded { .. } => {
                bless_entry_only(d, &b)?;
                let mut record = b.record;
                fx.install(d, &mut record).map_err(cut_or("install after the cut"))?;
            }
        }
    }
    Err(Stop::Bad(format!("v{} is not committed three boots after the cut", fx.to)))
}

/// The invariants on the disk after a cut, then boot on to v2. Returns
/// the chunks the install after the cut skipped (resumed).
fn check_after_cut(fx: &Fixture, before: &Disk, d: &Disk) -> Result<u64, String> {
    let durable = read_record(&before.durable[index(Target::State)]).map(|(_, s)| s.seq).map_err(|e| format!("{e}"))?;
    let region = &d.durable[index(Target::State)];
    let (_, state) = read_record(region).map_err(|e| format!("the record is lost: {e}"))?;
    if state.seq < durable {
        return Err(format!("the record went back from seq {durable} to {}: {state:?}", state.seq));
    }
    // The committed slot's partitions are never written.
    if state.committed == fx.from {
        for t in &fx.protected {
            if d.durable[index(*t)] != fx.start.durable[index(*t)] {
                return Err(format!("{t} of the committed slot was written"));
            }
        }
    }
    // The floor rises only at commit.
    let floor = if state.committed == fx.from { fx.floors.0 } else { fx.floors.1 };
    if state.rollback_floor != floor {
        return Err(format!("floor {} with slot {} committed", state.rollback_floor, state.committed));
    }
    // The boot entry the committed system starts from is never written,
    // and the loader starts the new image only while a trial (or a commit
    // not yet blessed) expects it.
    if fx.images {
        let (kept, target) = fx.entries;
        let ki = index(Target::BootImage(kept));
        if d.names[kept as usize] != EntryName::Named(None) || d.durable[ki] != fx.start.durable[ki] {
            return Err(format!("entry {kept}, the running system's, was written: {:?}", d.names));
        }
        let expected = state.trial.and_then(|t| t.boot_entry) == Some(target) || state.committed != fx.from;
        if matches!(d.names[target as usize], EntryName::Named(Some(t)) if t > 0) && !expected {
            return Err(format!(
                "the loader would start entry {target}'s new image while no trial expects it: {:?}, {state:?}",
                d.names
            ));
        }
    }
    // Only the committed slot or a ready trial boots, and it verifies.
    let plan = plan_boot(&state, None);
    let slot_status = state.status_of(plan.slot);
    if plan.slot != state.committed && slot_status != SlotStatus::Ready {
        return Err(format!("slot {} boots while {slot_status}", plan.slot));
    }
    let mut d = d.clone();
    verify_slot(fx, &d, &state, plan.slot).map_err(|e| format!("{e:?}"))?;
    // A slot marked good is one the device may fall back to (the init
    // boots the other good slot when the committed one is refused): its
    // manifest and layers are intact.
    for slot in [Slot::A, Slot::B].into_iter().filter(|s| state.status_of(*s) == SlotStatus::Good) {
        verify_slot(fx, &d, &state, slot).map_err(|e| format!("good slot {slot}: {e:?}"))?;
    }
    let at_cut = d.flushed_end.clone();
    settle(fx, &mut d).map_err(|e| format!("booting on: {e:?}"))?;
    // The install after the cut resumed from what was durable: no resumed
    // part fails its read back (the journal never counts a chunk that is
    // not on the medium), and each part is written again from at most one
    // chunk before where its durable bytes ended.
    if let Some(e) = d.events.iter().find(|e| e.starts_with("resume-failed")) {
        return Err(format!(
            "a resumed part did not read back ({e}): the journal counted a chunk that was not durable"
        ));
    }
    for &(t, bytes) in &d.parts_written {
        let durable = at_cut[t].min(bytes);
        if d.written[t] > bytes - durable + BLOCK as u64 {
            return Err(format!(
                "the install after the cut wrote {} bytes of a {bytes}-byte part whose first {durable} were durable",
                d.written[t]
            ));
        }
    }
    Ok(d.skipped)
}

/// One cut scenario: `run` does some work on a disk; power goes during
/// each of its operations in turn. Returns the cut points, the disks
/// checked and the chunks resumed installs skipped.
fn sweep(
    fx: &Fixture,
    start: &Disk,
    seed: u64,
    run: &dyn Fn(&Fixture, &mut Disk) -> Result<(), Stop>,
) -> (usize, usize, u64) {
    let mut start = start.clone();
    start.ops = 0;
    start.flushed_end.iter_mut().for_each(|f| *f = 0);
    let start = &start;
    let mut dry = start.clone();
    run(fx, &mut dry).unwrap_or_else(|e| panic!("seed {seed:#x}: the run without a cut fails: {e:?}"));
    let ops = dry.ops;
    let mut rng = Rng(seed);
    let (mut disks, mut skipped) = (0, 0);
    for k in 0..ops {
        let mut d = start.clone();
        d.cut_at = Some(k);
        match run(fx, &mut d) {
            Err(Stop::Cut) => {}
            other => panic!("seed {seed:#x} cut {k}: the run did not stop at the cut: {:?}", other.err()),
        }
        for variant in 0..2 + RANDOM_SUBSETS {
            // All, none, or per write: kept, dropped, or torn (each sector
            // kept, dropped, or itself torn at a random byte).
            let mut keep = |data: &[u8]| -> Vec<usize> {
                let n = data.len().div_ceil(SECTOR);
                match variant {
                    0 => vec![SECTOR; n],
                    1 => vec![0; n],
                    _ => match rng.below(4) {
                        0 => vec![0; n],
                        1 => vec![SECTOR; n],
                        _ => (0..n)
                            .map(|_| match rng.below(8) {
                                0..=2 => 0,
                                3..=5 => SECTOR,
                                _ => 1 + rng.below(SECTOR as u64 - 1) as usize,
                            })
                            .collect(),
                    },
                }
            };
            let after = d.after_cut(&mut keep);
            disks += 1;
            match check_after_cut(fx, &d, &after) {
                Ok(n) => skipped += n,
                Err(e) => panic!("seed {seed:#x}, power cut during operation {k} of {ops}, subset {variant}: {e}"),
            }
        }
    }
    (ops, disks, skipped)
}

fn seed() -> u64 {
    std::env::var("CAIRN_SIM_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x00c0_ffee)
}

/// The install from the factory disk.
fn run_install(fx: &Fixture, d: &mut Disk) -> Result<(), Stop> {
    let mut rec = Record::read(d).map_err(|e| Stop::Bad(format!("{e:?}")))?;
    fx.install(d, &mut rec).map_err(cut_or("install"))?;
    Ok(())
}

/// A trial boot that commits.
fn run_commit(fx: &Fixture, d: &mut Disk) -> Result<(), Stop> {
    let b = boot_up(fx, d)?;
    commit_trial(d, b)
}

/// A trial boot that fails (unhealthy) and rolls back: the entry it came
/// with is marked bad first, then the record ends the trial (as the init
/// does: a cut between them leaves a trial whose entry the loader no
/// longer starts, which the next boot ends as a fall-back).
fn run_rollback(fx: &Fixture, d: &mut Disk) -> Result<(), Stop> {
    let b = boot_up(fx, d)?;
    let mut record = b.record;
    let with_entry = record.state.trial.and_then(|t| t.boot_entry) == Some(b.entry);
    let mark_bad = |d: &mut Disk| -> Result<(), Stop> {
        if with_entry {
            d.rename(b.entry, EntryName::Named(Some(0))).map_err(cut_or("mark bad"))?;
        }
        Ok(())
    };
    if d.bug != Bug::RollbackRecordFirst {
        mark_bad(d)?;
    }
    record.write(d, fail_trial(&record.state)).map_err(cut_or("rollback"))?;
    if d.bug == Bug::RollbackRecordFirst {
        mark_bad(d)?;
    }
    Ok(())
}

/// Both updates (v1 on A to v2 on B, then v2 to v3 on A): power cut
/// during each operation of the install, of a trial boot that commits, and
/// of one that rolls back. Returns the cut points, the disks checked and
/// the chunks resumed installs skipped.
fn all_scenarios(bug: Bug, seed: u64) -> (usize, usize, u64) {
    all_scenarios_of(Fixture::new(bug), seed)
}

/// [`all_scenarios`] from `first`.
fn all_scenarios_of(first: Fixture, seed: u64) -> (usize, usize, u64) {
    let second = first.second();
    let mut total = (0, 0, 0);
    for (n, fx) in [first, second].iter().enumerate() {
        let staged = fx.staged();
        let runs = [run_install as fn(&Fixture, &mut Disk) -> Result<(), Stop>, run_commit, run_rollback];
        for (i, run) in runs.into_iter().enumerate() {
            let start = if i == 0 { &fx.start } else { &staged };
            let (ops, disks, skipped) = sweep(fx, start, seed.wrapping_add((n * 3 + i) as u64), &run);
            total = (total.0 + ops, total.1 + disks, total.2 + skipped);
        }
    }
    total
}

#[test]
fn every_power_cut_through_install_trial_commit_and_rollback_keeps_the_invariants() {
    let seed = seed();
    let t = std::time::Instant::now();
    let (cuts, disks, skipped) = all_scenarios(Bug::None, seed);
    std::eprintln!(
        "seed {seed:#x}: {cuts} cut points, {disks} disks after a cut checked, {skipped} chunks skipped by resumed \
         installs, in {:?}",
        t.elapsed()
    );
    assert!(cuts >= 20, "{cuts} cut points");
    assert!(skipped > 0, "no install after a cut resumed");
}

#[test]
fn every_power_cut_through_an_update_with_a_boot_image_keeps_the_entries_safe() {
    let seed = seed();
    let t = std::time::Instant::now();
    let (cuts, disks, _) = all_scenarios_of(Fixture::with(Bug::None, true), seed);
    std::eprintln!("seed {seed:#x}, with boot images: {cuts} cut points, {disks} disks checked, in {:?}", t.elapsed());
    assert!(cuts >= 20, "{cuts} cut points");
}

#[test]
fn an_update_with_a_boot_image_writes_the_other_entry_and_names_it_after_the_stage() {
    let fx = Fixture::with(Bug::None, true);
    let mut d = fx.start.clone();
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::B));
    let tail: Vec<&str> = d.events.iter().rev().take(4).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "manifest slot=b bytes=4096",
            "boot-image entry=b bytes=11288",
            "staged b v2 tries=3 seq=3",
            "entry-named b tries=3"
        ]
    );
    assert_eq!(d.names, [EntryName::Named(None), EntryName::Named(Some(3))]);
    assert_eq!(&d.durable[index(Target::BootImage(Slot::B))][..IMAGE_BYTES - 1000], &image_of(2)[..]);
    assert_eq!(rec.state.trial.and_then(|t| t.boot_entry), Some(Slot::B));
    // Booting on: the loader starts the new entry, the trial commits and
    // blesses it.
    assert_eq!(settle(&fx, &mut d).unwrap(), 2);
    assert_eq!((d.booted, d.names), (Some(Slot::B), [EntryName::Named(None); 2]));
    // The next update writes entry A (the one not booted), never B.
    let fx = fx.second();
    assert_eq!(fx.entries, (Slot::B, Slot::A));
    let mut d = fx.start.clone();
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::A));
    assert_eq!(d.names, [EntryName::Named(Some(3)), EntryName::Named(None)]);
    assert_eq!(rec.state.trial.map(|t| (t.slot, t.boot_entry)), Some((Slot::A, Some(Slot::A))));
}

#[test]
fn a_boot_image_is_refused_beside_an_unproven_entry_before_anything_is_written() {
    let fx = Fixture::with(Bug::None, true);
    let mut d = fx.start.clone();
    d.names[0] = EntryName::Named(Some(2));
    let mut rec = Record::read(&mut d).unwrap();
    let e = fx.install(&mut d, &mut rec).unwrap_err();
    assert_eq!((e.reason(), d.ops), ("boot-entry-unproven", 0));
    d.booted = None;
    let e = fx.install(&mut d, &mut rec).unwrap_err();
    assert_eq!((e.reason(), d.ops), ("no-boot-entry", 0));
}

#[test]
fn the_simulator_catches_an_image_named_before_its_trial_is_staged() {
    let e = caught_from(Bug::ImageNamedAtOnce, true);
    assert!(e.contains("while no trial expects it"), "{e}");
}

#[test]
fn the_simulator_catches_a_rollback_that_writes_the_record_before_marking_its_entry_bad() {
    let e = caught_from(Bug::RollbackRecordFirst, true);
    assert!(e.contains("while no trial expects it"), "{e}");
}

#[test]
fn power_cuts_after_every_trial_mount_end_the_trial_and_never_the_committed_slot() {
    let fx = Fixture::new(Bug::None);
    let mut d = fx.staged();
    let mut kinds = vec![];
    for _ in 0..8 {
        // The power goes while the slot mounts: write, flush, mount.
        d.cut_at = Some(
            d.ops
                + match plan_boot(&Record::read(&mut d).unwrap().state, None).write {
                    Some(_) => 2,
                    None => 0,
                },
        );
        let mut probe = d.clone();
        probe.cut_at = None;
        kinds.push(boot_up(&fx, &mut probe).map(|b| b.kind).unwrap());
        assert!(matches!(boot(&fx, &mut d), Err(Stop::Cut)));
        d = d.after_cut(&mut |data: &[u8]| vec![0; data.len().div_ceil(SECTOR)]);
    }
    let ended = BootKind::TrialEnded { slot: Slot::B, reason: crate::update::TrialFailure::OutOfTries };
    assert_eq!(
        kinds[..5],
        [
            BootKind::Trial { tries_left: 2 },
            BootKind::Trial { tries_left: 1 },
            BootKind::Trial { tries_left: 0 },
            ended,
            BootKind::Committed
        ]
    );
    assert!(kinds[4..].iter().all(|k| *k == BootKind::Committed), "{kinds:?}");
    let s = Record::read(&mut d).unwrap().state;
    assert_eq!((s.committed, s.trial, s.rollback_floor), (Slot::A, None, 0));
    assert_eq!(s.status, [SlotStatus::Good, SlotStatus::Bad]);
}

/// A broken installer or disk fails the sweep.
fn caught(bug: Bug) -> String {
    caught_from(bug, false)
}

/// [`caught`], from [`Fixture::with`] `images`.
fn caught_from(bug: Bug, images: bool) -> String {
    let r = std::panic::catch_unwind(|| all_scenarios_of(Fixture::with(bug, images), seed()));
    let e = r.expect_err("the simulator missed the bug");
    e.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn the_simulator_catches_a_stage_before_the_manifest_is_durable() {
    let e = caught(Bug::NoManifestFlush);
    assert!(e.contains("slot b boots"), "{e}");
}

#[test]
fn the_simulator_catches_a_record_copy_written_in_place() {
    let e = caught(Bug::RecordInPlace);
    assert!(e.contains("the record went back") || e.contains("the record is lost"), "{e}");
}

#[test]
fn the_simulator_catches_a_journal_entry_durable_before_its_chunk() {
    let e = caught(Bug::JournalBeforeData);
    assert!(e.contains("did not read back"), "{e}");
}

#[test]
fn the_simulator_catches_a_mount_before_the_try_is_durable() {
    let e = caught(Bug::MountBeforeTry);
    assert!(e.contains("not yet written"), "{e}");
}

#[test]
fn the_fixture_installs_one_changed_and_one_new_layer() {
    let fx = Fixture::new(Bug::None);
    let mut d = fx.start.clone();
    let mut rec = Record::read(&mut d).unwrap();
    let keys = fx.keys();
    let v1 = envelope::open_manifest(&d.current[index(Target::Manifest(Slot::A))], &keys).unwrap();
    let cx = Install {
        keys: &keys,
        product: PRODUCT,
        committed: &v1,
        partitions: &fx.partitions,
        chunk: BLOCK,
        booted_entry: None,
    };
    let mut events = vec![];
    let r = install(&mut d, &cx, &mut rec, |p| events.push(describe(&p)));
    assert_eq!(r, Ok(Slot::B));
    assert_eq!(
        events,
        [
            "verified reuse=1 write=2 bytes=28672",
            "claimed slot=b seq=2",
            "layer app cairn-layer-04 16384",
            "layer extra cairn-layer-05 12288",
            "manifest slot=b bytes=4096",
            "staged b v2 tries=3 seq=3",
        ]
    );
    // A second run is refused before writing: a trial is pending.
    let ops = d.ops;
    let e = fx.install(&mut d, &mut rec).unwrap_err();
    assert_eq!((e.reason(), d.ops), ("trial-pending", ops));
    assert_eq!(d.record_writes, 2);
    assert!(d.cache.is_empty(), "everything written was flushed");
    let _ = ToString::to_string(&e);

    // The second update writes the empty partition 6 and partition 2 (v1's
    // app, no longer used), never v2's 1, 4 and 5.
    let fx = fx.second();
    let mut d = fx.start.clone();
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!((rec.state.committed, rec.state.rollback_floor), (Slot::B, 2));
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::A));
    assert_eq!(rec.state.partition_of(&layer("tools", 6, 8192).0.digest), Some(6));
    assert_eq!(rec.state.partition_of(&layer("more", 7, 4096).0.digest), Some(2));
    assert_eq!(rec.state.partition_of(&layer("app", 2, 8192).0.digest), None, "v1's app is forgotten");
}

#[test]
fn refusals_and_a_tampered_layer_write_nothing() {
    let fx = Fixture::new(Bug::None);
    // Another key: refused before any write.
    let mut d = fx.start.clone();
    let mut rec = Record::read(&mut d).unwrap();
    let other = [SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes()];
    let v1 = envelope::open_manifest(&d.current[index(Target::Manifest(Slot::A))], &fx.keys()).unwrap();
    let cx = Install {
        keys: &other,
        product: PRODUCT,
        committed: &v1,
        partitions: &fx.partitions,
        chunk: BLOCK,
        booted_entry: None,
    };
    let e = install(&mut d, &cx, &mut rec, |_| {}).unwrap_err();
    assert_eq!((e.reason(), d.ops), ("bad-bundle", 0));
    // Another product: refused before any write.
    let keys = fx.keys();
    let cx = Install {
        keys: &keys,
        product: "router-v2",
        committed: &v1,
        partitions: &fx.partitions,
        chunk: BLOCK,
        booted_entry: None,
    };
    let e = install(&mut d, &cx, &mut rec, |_| {}).unwrap_err();
    assert_eq!((e.reason(), d.ops), ("wrong-product", 0));
    // A flipped byte in the last layer part: found by its hash in the
    // check pass, before anything is written.
    let last = d.current[index(Target::Source)].len() - 1;
    d.current[index(Target::Source)][last] ^= 1;
    let e = fx.install(&mut d, &mut rec).unwrap_err();
    assert!(matches!(e, InstallError::Bundle(BundleError::PartDigest { part: PartName::Layer(1), .. })), "{e:?}");
    assert_eq!(d.ops, 0, "a tampered layer part wrote something");
    assert_eq!(rec.state.status, [SlotStatus::Good, SlotStatus::Empty]);
    assert_eq!(plan_boot(&rec.state, None).slot, Slot::A);
    for t in &fx.protected {
        assert!(d.current[index(*t)] == fx.start.current[index(*t)], "{t} written");
    }
}

/// The disk after a power cut (unflushed writes lost) once the journal
/// counts at least two chunks of the first layer part, but not all of it.
fn cut_mid_layer(fx: &Fixture) -> Disk {
    for k in 0.. {
        let mut d = fx.start.clone();
        d.cut_at = Some(k);
        let _ = run_install(fx, &mut d);
        let after = d.after_cut(&mut |data: &[u8]| vec![0; data.len().div_ceil(SECTOR)]);
        let region = &after.durable[index(Target::State)][RECORD_SIZE..];
        if let Some((_, j)) = crate::journal::read(region) {
            if j.parts[0].chunks >= 2 {
                assert!(j.parts[0].chunks < 4, "the first cut past two chunks is mid-part");
                return after;
            }
        }
    }
    unreachable!()
}

#[test]
fn a_resumed_install_skips_what_the_journal_counts_and_rewrites_a_part_that_does_not_read_back() {
    let fx = Fixture::new(Bug::None);
    let after = cut_mid_layer(&fx);
    let mut d = after.clone();
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!(rec.state.status_of(Slot::B), SlotStatus::Installing);
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::B));
    assert_eq!(
        d.events[1..4],
        [
            "resumed app cairn-layer-04 skipped=2/4",
            "layer app cairn-layer-04 16384",
            "resumed extra cairn-layer-05 skipped=0/3"
        ]
    );
    assert!(!d.events.iter().any(|e| e.starts_with("claimed")), "a resumed install claimed again: {:?}", d.events);
    assert_eq!(d.written[index(Target::Layer(4))], 8192, "only the two chunks the journal does not count");
    verify_slot(&fx, &d, &rec.state, Slot::B).unwrap();

    // A skipped chunk that is not what the journal says (here: damaged on
    // the medium): the part's read back differs, it is written whole.
    let mut d = after.clone();
    for v in [&mut d.durable, &mut d.current] {
        v[index(Target::Layer(4))][100] ^= 1;
    }
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::B));
    assert!(d.events.iter().any(|e| e == "resume-failed cairn-layer-04"), "{:?}", d.events);
    assert_eq!(d.written[index(Target::Layer(4))], 8192 + 16384);
    verify_slot(&fx, &d, &rec.state, Slot::B).unwrap();
}

#[test]
fn a_different_bundle_or_a_record_that_moved_on_discards_the_journal() {
    let fx = Fixture::new(Bug::None);
    let after = cut_mid_layer(&fx);
    let keys = fx.keys();
    // The same manifest in another bundle (it carries the unchanged base
    // too): another TOC.
    let src = &fx.start.current[index(Target::Source)];
    let toc = bundle::open_toc(src, &keys).unwrap();
    let mpart = &src[toc.manifest.offset as usize..][..toc.manifest.size as usize];
    let (v2, _) = bundle::open_manifest_part(&toc, mpart, &keys).unwrap();
    let carried = [layer("app", 4, 12288), layer("extra", 5, 8192), layer("base", 1, 8192)];
    let other = bundle(&fx.key, &v2, &carried.iter().collect::<Vec<_>>(), None);
    let mut d = after.clone();
    d.current[index(Target::Source)] = other.clone();
    d.durable[index(Target::Source)] = other;
    let mut rec = Record::read(&mut d).unwrap();
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::B));
    assert!(d.events.iter().any(|e| e.starts_with("claimed")), "{:?}", d.events);
    assert!(!d.events.iter().any(|e| e.starts_with("resumed")), "{:?}", d.events);

    // The record written once more since the claim (same state, next seq).
    let mut d = after.clone();
    let mut rec = Record::read(&mut d).unwrap();
    let same = rec.state.clone();
    rec.write(&mut d, same).unwrap();
    assert_eq!(fx.install(&mut d, &mut rec), Ok(Slot::B));
    assert!(d.events.iter().any(|e| e.starts_with("claimed")), "{:?}", d.events);
    assert!(!d.events.iter().any(|e| e.starts_with("resumed")), "{:?}", d.events);
    assert_eq!(d.written[index(Target::Layer(4))], 16384);
}
