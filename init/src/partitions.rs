//! Find the boot disk and its partitions by GPT name.
//!
//! Every system partition (`cairn-*`) comes from one disk, the boot disk:
//! the disk whose GPT disk GUID the kernel command line names
//! (`cairn.disk=GUID`), or, without that argument, the one disk that holds
//! `cairn-*` partitions. Two candidate disks, or a `cairn-*` name twice on
//! the boot disk, are refused, never merged; `cairn-*` partitions on other
//! disks (a USB stick with an old signed manifest) are ignored and reported.
//!
//! The kernel parses the partition tables: a disk's partitions are the
//! `/sys/class/block/<disk>/<part>` entries, each with `PARTNAME=` in its
//! uevent file. The disk GUID is read from the GPT header at LBA 1 (the
//! logical block size from sysfs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Partitions by GPT name → device node path.
pub type Partitions = BTreeMap<String, String>;

/// Partitions the device cannot boot without.
pub const REQUIRED: [&str; 3] = ["cairn-state", "cairn-manifest-a", "cairn-manifest-b"];

/// The EFI system partition (boot loader and boot slot images).
pub const ESP: &str = "cairn-esp";

/// Prefix of the system partitions.
pub const SYSTEM_PREFIX: &str = "cairn-";

/// A GPT disk GUID in its on-disk (mixed endian) byte order.
pub type Guid = [u8; 16];

/// Byte order of the text form: the first three fields are little endian.
const GUID_ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

/// Parse `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (any case) into on-disk order.
pub fn parse_guid(text: &str) -> Option<Guid> {
    let b = text.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|i| b.get(*i) != Some(&b'-')) {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|c| *c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut g = [0u8; 16];
    for (n, pair) in hex.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        let v = u8::from_str_radix(s, 16).ok()?;
        *g.get_mut(*GUID_ORDER.get(n)?)? = v;
    }
    Some(g)
}

/// A GUID as text, capitals (as `cairn image assemble` prints it).
pub fn guid_text(g: &Guid) -> String {
    let mut out = String::with_capacity(36);
    for (n, i) in GUID_ORDER.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{:02X}", g.get(*i).copied().unwrap_or(0)));
    }
    out
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The disk GUID from a GPT header (the start of LBA 1): signature
/// "EFI PART", a header size of 92 bytes up to the block, and a matching
/// header CRC. `None` for anything else.
pub fn gpt_disk_guid(header: &[u8]) -> Option<Guid> {
    if header.get(..8)? != b"EFI PART" {
        return None;
    }
    let word = |o: usize| -> Option<u32> {
        let b = header.get(o..o + 4)?;
        Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]))
    };
    let size = word(12)? as usize;
    if size < 92 {
        return None;
    }
    let mut check = header.get(..size)?.to_vec();
    check.get_mut(16..20)?.fill(0);
    if crc32(&check) != word(16)? {
        return None;
    }
    let mut g = [0u8; 16];
    g.copy_from_slice(header.get(56..72)?);
    Some(g)
}

/// Parse one uevent file: (DEVNAME, PARTNAME) when both are present.
pub fn parse_uevent(text: &str) -> Option<(String, String)> {
    let mut dev = None;
    let mut part = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("DEVNAME=") {
            dev = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("PARTNAME=") {
            part = Some(v.to_owned());
        }
    }
    Some((dev?, part?))
}

/// One whole disk as found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name ("vda").
    pub name: String,
    /// GPT disk GUID, when it has a readable GPT.
    pub guid: Option<Guid>,
    /// Unique GUIDs of its GPT partitions (read only when a loader named
    /// the partition it booted from).
    pub part_guids: Vec<Guid>,
    /// Its named partitions: (GPT name, kernel name), in sysfs order.
    pub parts: Vec<(String, String)>,
}

impl Disk {
    fn system_names(&self) -> Vec<String> {
        self.parts.iter().filter(|(n, _)| n.starts_with(SYSTEM_PREFIX)).map(|(n, _)| n.clone()).collect()
    }
}

/// The chosen boot disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Kernel name of the disk.
    pub disk: String,
    /// Its partitions by GPT name → device node.
    pub partitions: Partitions,
    /// Other disks holding `cairn-*` partitions (ignored): (disk, names).
    pub foreign: Vec<(String, Vec<String>)>,
}

/// Why no boot disk was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChooseError {
    /// No disk matches (yet): the GUID asked for, or any disk with `cairn-*`
    /// partitions.
    NotFound,
    /// More than one disk qualifies (named).
    Ambiguous(Vec<String>),
    /// A `cairn-*` name appears twice on the boot disk.
    Duplicate {
        /// The disk.
        disk: String,
        /// The name.
        name: String,
    },
}

/// What names the boot disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// `cairn.disk=`: its GPT disk GUID.
    Disk(Guid),
    /// The boot loader's `LoaderDevicePartUUID`: the disk holding the EFI
    /// system partition the firmware started the loader from.
    Partition(Guid),
    /// Nothing: the one disk holding `cairn-*` partitions.
    Only,
}

impl Want {
    /// Word for events: what chose the disk.
    pub fn by(&self) -> &'static str {
        match self {
            Want::Disk(_) => "cmdline",
            Want::Partition(_) => "loader",
            Want::Only => "only",
        }
    }
}

/// Choose the boot disk (see [`Want`]).
pub fn choose(disks: &[Disk], want: Want) -> Result<BootDisk, ChooseError> {
    let candidates: Vec<&Disk> = match want {
        Want::Disk(g) => disks.iter().filter(|d| d.guid == Some(g)).collect(),
        Want::Partition(g) => disks.iter().filter(|d| d.part_guids.contains(&g)).collect(),
        Want::Only => disks.iter().filter(|d| !d.system_names().is_empty()).collect(),
    };
    let boot = match candidates.as_slice() {
        [] => return Err(ChooseError::NotFound),
        [one] => *one,
        many => return Err(ChooseError::Ambiguous(many.iter().map(|d| d.name.clone()).collect())),
    };
    let mut partitions = Partitions::new();
    for (name, dev) in &boot.parts {
        if partitions.contains_key(name) {
            if name.starts_with(SYSTEM_PREFIX) {
                return Err(ChooseError::Duplicate { disk: boot.name.clone(), name: name.clone() });
            }
            continue; // another name twice: the first one is used
        }
        partitions.insert(name.clone(), format!("/dev/{dev}"));
    }
    let foreign = disks
        .iter()
        .filter(|d| d.name != boot.name)
        .map(|d| (d.name.clone(), d.system_names()))
        .filter(|(_, names)| !names.is_empty())
        .collect();
    Ok(BootDisk { disk: boot.name.clone(), partitions, foreign })
}

/// Where [`scan`] looks: sysfs and the device nodes (`/sys`, `/dev` on
/// the device; a directory tree in the host tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs (`/sys`): `block/<disk>` names the whole disks,
    /// `class/block/<disk>/<part>/{partition,uevent}` their partitions.
    pub sys: std::path::PathBuf,
    /// The device nodes (`/dev`).
    pub dev: std::path::PathBuf,
}

impl Roots {
    /// The running system's `/sys` and `/dev`.
    pub fn system() -> Self {
        Self { sys: "/sys".into(), dev: "/dev".into() }
    }
}

/// Most partition entries read from a GPT (the usual table has 128).
const MAX_ENTRIES: u32 = 256;

/// The unique partition GUIDs of a GPT partition entry array (`count`
/// entries of `size` bytes; unused entries, all-zero type, are skipped).
pub fn gpt_partition_guids(entries: &[u8], count: u32, size: u32) -> Vec<Guid> {
    let size = size as usize;
    if size < 128 {
        return Vec::new();
    }
    entries
        .chunks_exact(size)
        .take(count.min(MAX_ENTRIES) as usize)
        .filter(|e| e.get(..16).is_some_and(|t| t.iter().any(|b| *b != 0)))
        .filter_map(|e| e.get(16..32).and_then(|g| g.try_into().ok()))
        .collect()
}

/// Read the GPT of `<dev>/<disk>`: its disk GUID (header at LBA 1) and,
/// when `with_parts`, its partitions' unique GUIDs.
fn read_gpt(roots: &Roots, disk: &str, with_parts: bool) -> (Option<Guid>, Vec<Guid>) {
    use std::os::unix::fs::FileExt;
    let lbs: u64 = std::fs::read_to_string(roots.sys.join("class/block").join(disk).join("queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| (512..=65536).contains(n))
        .unwrap_or(512);
    let Ok(f) = std::fs::File::open(roots.dev.join(disk)) else { return (None, Vec::new()) };
    let mut header = vec![0u8; lbs as usize];
    if f.read_exact_at(&mut header, lbs).is_err() {
        return (None, Vec::new());
    }
    let guid = gpt_disk_guid(&header);
    if guid.is_none() || !with_parts {
        return (guid, Vec::new());
    }
    let word = |o: usize| header.get(o..o + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0);
    let lba = header.get(72..80).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
    let (count, size) = (word(80).min(MAX_ENTRIES), word(84));
    let mut entries = vec![0u8; (count as usize).saturating_mul(size as usize).min(MAX_ENTRIES as usize * 512)];
    if lba == 0 || f.read_exact_at(&mut entries, lba.saturating_mul(lbs)).is_err() {
        return (guid, Vec::new());
    }
    (guid, gpt_partition_guids(&entries, count, size))
}

/// A disk's named partitions whose device node exists: (GPT name, kernel
/// name), in partition order (`sda2` before `sda10`).
fn list_partitions(roots: &Roots, disk: &str) -> Vec<(String, String)> {
    let mut parts: Vec<(String, String)> = partition_dirs(roots, disk)
        // Only a partition's uevent has a PARTNAME (a named GPT entry).
        .filter_map(|p| std::fs::read_to_string(p.join("uevent")).ok())
        .filter_map(|t| parse_uevent(&t))
        // sysfs shows a partition a moment before devtmpfs has its node.
        .filter(|(dev, _)| roots.dev.join(dev).exists())
        .map(|(dev, part)| (part, dev))
        .collect();
    // The kernel names of one disk's partitions differ only in their
    // trailing number: shorter first is numeric order.
    parts.sort_by(|a, b| (a.1.len(), &a.1).cmp(&(b.1.len(), &b.1)));
    parts
}

/// The entries of `disk`'s sysfs directory that may be its partitions.
/// The kernel names a partition after its disk (`vda1`, `nvme0n1p1`,
/// `mmcblk0p2`), and no attribute of a disk starts with the disk's name:
/// only those entries are looked at (a sysfs lookup is slow, and a disk
/// has some thirty attributes).
fn partition_dirs<'a>(roots: &Roots, disk: &'a str) -> impl Iterator<Item = std::path::PathBuf> + 'a {
    let dir = roots.sys.join("class/block").join(disk);
    let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
    entries.filter(move |e| e.file_name().as_encoded_bytes().starts_with(disk.as_bytes())).map(|e| e.path())
}

/// Whether `disk` has a partition (its `partition` file), looking no
/// further than the first.
fn has_partitions(roots: &Roots, disk: &str) -> bool {
    partition_dirs(roots, disk).any(|p| p.join("partition").exists())
}

/// Scan sysfs (under `roots`) once: every whole disk (`vda`, `nvme0n1`, `sda`, `mmcblk0`;
/// any bus) with its named partitions. Disks without partitions are skipped
/// (they are never opened).
///
/// A disk's partitions appear one by one while the kernel reads its
/// partition table, and the kernel does that holding the disk's open lock.
/// NVMe, SATA and USB disks are probed asynchronously, so the scan may run
/// in the middle of it: the disk is opened (to read its GPT disk GUID)
/// before its partitions are listed for good, and that open waits until
/// the kernel has added them all. Partition GUIDs are read when `with_parts`.
pub fn scan_in(roots: &Roots, with_parts: bool) -> Vec<Disk> {
    let mut disks = Vec::new();
    let Ok(dir) = std::fs::read_dir(roots.sys.join("block")) else {
        return disks;
    };
    let mut names: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        if !has_partitions(roots, &name) {
            continue;
        }
        let (guid, part_guids) = read_gpt(roots, &name, with_parts);
        let parts = list_partitions(roots, &name);
        disks.push(Disk { name, guid, part_guids, parts });
    }
    disks
}

/// Why the partitions could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// A refusal ([`ChooseError::Ambiguous`] or [`ChooseError::Duplicate`]),
    /// or no disk at the timeout.
    Choose(ChooseError),
    /// The boot disk lacks these required partitions at the timeout.
    Missing {
        /// The disk.
        disk: String,
        /// Names missing.
        missing: Vec<&'static str>,
    },
}

/// Scan until the boot disk is chosen and holds every required partition,
/// or the timeout passes. Ambiguity and duplicates are refused at once.
/// A disk that appears late (USB storage enumerates a second or more after
/// its driver loads; NVMe and SATA probe in the background) is found by a
/// later scan: the wait is `cairn.disk_timeout_ms`.
///
/// Between two scans it waits for the kernel's next block device uevent
/// (at most [`RESCAN_AFTER`], should one be missed), or without the uevent
/// socket [`NAP`].
///
/// Also returns how many scans it made (1: the disk was there at once).
pub fn wait_for(timeout: Duration, want: Want) -> (Result<BootDisk, WaitError>, u32) {
    let mut wake = crate::uevent::BlockWake::open();
    let most = if wake.listens() { RESCAN_AFTER } else { NAP };
    let mut scans = 1;
    let found = wait_in(&Roots::system(), timeout, want, &mut |left| {
        scans += 1;
        wake.nap(left.min(most));
    });
    (found, scans)
}

/// The longest wait for a block uevent between two scans.
const RESCAN_AFTER: Duration = Duration::from_millis(250);
/// The wait between two scans without uevents.
const NAP: Duration = Duration::from_millis(20);

/// [`wait_for`] under `roots`; `nap` waits between two scans, given the
/// time left until the timeout.
pub fn wait_in(
    roots: &Roots,
    timeout: Duration,
    want: Want,
    nap: &mut dyn FnMut(Duration),
) -> Result<BootDisk, WaitError> {
    let start = Instant::now();
    loop {
        let result = choose(&scan_in(roots, matches!(want, Want::Partition(_))), want);
        let out_of_time = start.elapsed() >= timeout;
        match result {
            Ok(b) => {
                let missing: Vec<_> = REQUIRED.into_iter().filter(|r| !b.partitions.contains_key(*r)).collect();
                if missing.is_empty() {
                    return Ok(b);
                }
                if out_of_time {
                    return Err(WaitError::Missing { disk: b.disk, missing });
                }
            }
            Err(e @ (ChooseError::Ambiguous(_) | ChooseError::Duplicate { .. })) => return Err(WaitError::Choose(e)),
            Err(e) if out_of_time => return Err(WaitError::Choose(e)),
            Err(_) => {}
        }
        crate::watchdog::pet(); // watchdog: the wait is cairn.disk_timeout_ms long
        nap(timeout.saturating_sub(start.elapsed()));
    }
}

/// Layer partitions (`cairn-layer-NN`) by number.
pub fn layer_partition(parts: &Partitions, number: u8) -> Option<&String> {
    parts.get(&layer_partition_name(number))
}

/// The name of layer partition `number`.
pub fn layer_partition_name(number: u8) -> String {
    format!("cairn-layer-{number:02}")
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::panic)] // tests may index and panic
mod tests {
    use super::*;

    #[test]
    fn uevent_lines_give_device_and_name() {
        let t = "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=1\nPARTNAME=cairn-state\n";
        assert_eq!(parse_uevent(t), Some(("vda1".into(), "cairn-state".into())));
        assert_eq!(parse_uevent("DEVNAME=vda\nDEVTYPE=disk\n"), None);
        assert_eq!(layer_partition_name(3), "cairn-layer-03");
    }

    const LINUX_DATA: Guid =
        [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];

    #[test]
    fn partition_guids_come_from_used_entries() {
        let mut entries = vec![0u8; 4 * 128];
        entries[0] = 1; // a type GUID
        entries[16..32].copy_from_slice(&[5; 16]);
        entries[2 * 128 + 16..2 * 128 + 32].copy_from_slice(&[6; 16]); // unused: no type
        entries[3 * 128] = 1;
        entries[3 * 128 + 16..3 * 128 + 32].copy_from_slice(&[7; 16]);
        assert_eq!(gpt_partition_guids(&entries, 4, 128), vec![[5; 16], [7; 16]]);
        assert_eq!(gpt_partition_guids(&entries, 1, 128), vec![[5; 16]]);
        assert!(gpt_partition_guids(&entries, 4, 64).is_empty(), "entries are at least 128 bytes");
    }

    #[test]
    fn guids_parse_in_gpt_byte_order_and_print_back() {
        assert_eq!(parse_guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4"), Some(LINUX_DATA));
        assert_eq!(parse_guid("0fc63daf-8483-4772-8e79-3d69d8477de4"), Some(LINUX_DATA));
        assert_eq!(guid_text(&LINUX_DATA), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        for bad in
            ["", "0FC63DAF84834772", "0FC63DAF-8483-4772-8E79-3D69D8477DE", "0FC63DAF+8483-4772-8E79-3D69D8477DE4"]
        {
            assert_eq!(parse_guid(bad), None, "{bad}");
        }
        assert_eq!(parse_guid("0FC63DAG-8483-4772-8E79-3D69D8477DE4"), None);
    }

    /// A GPT header as a real writer lays it out (92 bytes in a block).
    fn header(guid: &Guid, block: usize) -> Vec<u8> {
        let mut h = vec![0u8; block];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[56..72].copy_from_slice(guid);
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn the_disk_guid_comes_from_a_valid_gpt_header_only() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the IEEE check value");
        assert_eq!(gpt_disk_guid(&header(&LINUX_DATA, 512)), Some(LINUX_DATA));
        assert_eq!(gpt_disk_guid(&header(&LINUX_DATA, 4096)), Some(LINUX_DATA), "4K logical blocks");
        let mut bad = header(&LINUX_DATA, 512);
        bad[60] ^= 1;
        assert_eq!(gpt_disk_guid(&bad), None, "CRC mismatch");
        let mut bad = header(&LINUX_DATA, 512);
        bad[0] = b'X';
        assert_eq!(gpt_disk_guid(&bad), None, "signature");
        let mut bad = header(&LINUX_DATA, 512);
        bad[12..16].copy_from_slice(&600u32.to_le_bytes());
        assert_eq!(gpt_disk_guid(&bad), None, "header larger than the block");
        assert_eq!(gpt_disk_guid(&header(&LINUX_DATA, 512)[..80]), None, "short");
        assert_eq!(gpt_disk_guid(&[]), None);
    }

    fn disk(name: &str, guid: u8, parts: &[&str]) -> Disk {
        Disk {
            name: name.into(),
            guid: Some([guid; 16]),
            part_guids: vec![[guid + 100; 16], [guid + 200; 16]],
            parts: parts.iter().enumerate().map(|(i, p)| ((*p).to_owned(), format!("{name}{}", i + 1))).collect(),
        }
    }

    const SYS: [&str; 4] = ["cairn-state", "cairn-manifest-a", "cairn-manifest-b", "cairn-data"];

    #[test]
    fn the_boot_disk_is_the_one_named_or_the_only_candidate() {
        let vda = disk("vda", 1, &SYS);
        let usb = disk("sda", 2, &["cairn-state", "cairn-manifest-a", "cairn-data"]);
        let other = disk("vdc", 3, &["photos"]);
        let disks = [vda.clone(), usb.clone(), other.clone()];

        let b = choose(&disks, Want::Disk([1; 16])).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(b.disk, "vda");
        assert_eq!(b.partitions.get("cairn-data").map(String::as_str), Some("/dev/vda4"));
        assert_eq!(b.partitions.len(), 4, "nothing from other disks");
        assert_eq!(
            b.foreign,
            [("sda".to_owned(), vec!["cairn-state".into(), "cairn-manifest-a".into(), "cairn-data".into()])]
        );

        let b = choose(&disks, Want::Disk([2; 16])).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((b.disk.as_str(), b.foreign.len()), ("sda", 1), "the GUID decides, whatever the order");

        assert_eq!(choose(&disks, Want::Only), Err(ChooseError::Ambiguous(vec!["vda".into(), "sda".into()])));
        assert_eq!(choose(&disks, Want::Disk([9; 16])), Err(ChooseError::NotFound));
        let twin = Disk { name: "vdb".into(), ..vda.clone() };
        assert_eq!(
            choose(&[vda.clone(), twin], Want::Disk([1; 16])),
            Err(ChooseError::Ambiguous(vec!["vda".into(), "vdb".into()])),
            "two disks with the same GUID"
        );

        let b = choose(&[vda.clone(), other.clone()], Want::Only).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((b.disk.as_str(), b.foreign.len()), ("vda", 0));
        assert!(!b.partitions.contains_key("photos"));
        assert_eq!(choose(&[other], Want::Only), Err(ChooseError::NotFound));
        assert_eq!(choose(&[], Want::Only), Err(ChooseError::NotFound));

        // The loader names the partition it booted from: its disk, whatever
        // else holds cairn-* partitions.
        let b = choose(&disks, Want::Partition([202; 16])).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((b.disk.as_str(), b.foreign.len()), ("sda", 1));
        assert_eq!(choose(&disks, Want::Partition([7; 16])), Err(ChooseError::NotFound));
    }

    #[test]
    fn a_system_name_twice_on_the_boot_disk_is_refused() {
        let d = disk("vda", 1, &["cairn-state", "cairn-manifest-a", "cairn-state"]);
        assert_eq!(
            choose(std::slice::from_ref(&d), Want::Disk([1; 16])),
            Err(ChooseError::Duplicate { disk: "vda".into(), name: "cairn-state".into() })
        );
        assert!(matches!(choose(&[d], Want::Only), Err(ChooseError::Duplicate { .. })));
        let d = disk("vda", 1, &["cairn-state", "photos", "photos"]);
        let b = choose(&[d], Want::Only).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(b.partitions.get("photos").map(String::as_str), Some("/dev/vda2"), "the first other one");
    }

    /// A sysfs and /dev tree in a temporary directory, laid out as the
    /// kernel does for disks of any bus.
    struct Fake {
        roots: Roots,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let base = std::env::temp_dir().join(format!("cairn-partitions-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            let roots = Roots { sys: base.join("sys"), dev: base.join("dev") };
            std::fs::create_dir_all(roots.sys.join("block")).unwrap();
            std::fs::create_dir_all(&roots.dev).unwrap();
            Self { roots }
        }

        /// A whole disk with a GPT header (disk GUID `guid`) at LBA 1.
        fn disk(&self, name: &str, guid: Option<u8>, block: usize) {
            std::fs::create_dir_all(self.roots.sys.join("block").join(name)).unwrap();
            let class = self.roots.sys.join("class/block").join(name);
            std::fs::create_dir_all(class.join("queue")).unwrap();
            std::fs::write(class.join("queue/logical_block_size"), format!("{block}\n")).unwrap();
            let mut image = vec![0u8; block];
            image.extend(guid.map_or_else(|| vec![0u8; block], |g| header(&[g; 16], block)));
            std::fs::write(self.roots.dev.join(name), image).unwrap();
        }

        /// Partition `part` of `disk` named `name`, with or without its node.
        fn part(&self, disk: &str, part: &str, name: &str, node: bool) {
            let dir = self.roots.sys.join("class/block").join(disk).join(part);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("partition"), "1\n").unwrap();
            std::fs::write(
                dir.join("uevent"),
                format!("MAJOR=8\nDEVNAME={part}\nDEVTYPE=partition\nPARTNAME={name}\n"),
            )
            .unwrap();
            if node {
                self.node(part);
            }
        }

        fn node(&self, dev: &str) {
            std::fs::write(self.roots.dev.join(dev), b"").unwrap();
        }

        /// A disk holding the required partitions (plus `cairn-data`), its
        /// partitions named `<disk><sep><n>`.
        fn system_disk(&self, name: &str, sep: &str, guid: u8, block: usize) {
            self.disk(name, Some(guid), block);
            for (n, p) in SYS.iter().enumerate() {
                self.part(name, &format!("{name}{sep}{}", n + 1), p, true);
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            if let Some(base) = self.roots.sys.parent() {
                let _ = std::fs::remove_dir_all(base);
            }
        }
    }

    #[test]
    fn disks_of_every_bus_are_found_by_partition_name() {
        let f = Fake::new("buses");
        f.system_disk("nvme0n1", "p", 1, 512);
        f.system_disk("sda", "", 2, 4096);
        f.system_disk("mmcblk0", "p", 3, 512);
        // eMMC boot areas and an idle loop device: whole disks, no partitions.
        f.disk("mmcblk0boot0", None, 512);
        std::fs::create_dir_all(f.roots.sys.join("block/loop0")).unwrap();

        let disks = scan_in(&f.roots, false);
        let names: Vec<_> = disks.iter().map(|d| (d.name.as_str(), d.guid.map(|g| g[0]), d.parts.len())).collect();
        assert_eq!(names, [("mmcblk0", Some(3), 4), ("nvme0n1", Some(1), 4), ("sda", Some(2), 4)]);
        for (guid, disk, state, data) in [
            (1, "nvme0n1", "/dev/nvme0n1p1", "/dev/nvme0n1p4"),
            (2, "sda", "/dev/sda1", "/dev/sda4"),
            (3, "mmcblk0", "/dev/mmcblk0p1", "/dev/mmcblk0p4"),
        ] {
            let b = choose(&disks, Want::Disk([guid; 16])).unwrap();
            assert_eq!(b.disk, disk);
            assert_eq!(b.partitions.get("cairn-state").map(String::as_str), Some(state), "{disk}");
            assert_eq!(b.partitions.get("cairn-data").map(String::as_str), Some(data), "{disk}");
            assert_eq!(b.foreign.len(), 2, "{disk}");
        }
    }

    #[test]
    fn a_partition_counts_once_its_device_node_exists() {
        let f = Fake::new("node");
        f.disk("sda", Some(7), 512);
        f.part("sda", "sda1", "cairn-state", true);
        f.part("sda", "sda2", "cairn-manifest-a", false);
        let parts = |f: &Fake| scan_in(&f.roots, false).first().map(|d| d.parts.clone()).unwrap_or_default();
        assert_eq!(parts(&f), [("cairn-state".to_owned(), "sda1".to_owned())], "sda2 has no node yet");
        f.node("sda2");
        assert_eq!(parts(&f).len(), 2);
    }

    #[test]
    fn partitions_are_listed_in_numeric_order() {
        let f = Fake::new("order");
        f.disk("sda", Some(7), 512);
        for n in [10, 2, 1, 11] {
            f.part("sda", &format!("sda{n}"), "photos", true);
        }
        let disks = scan_in(&f.roots, false);
        let devs: Vec<_> = disks[0].parts.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(devs, ["sda1", "sda2", "sda10", "sda11"]);
        let b = choose(&disks, Want::Only).unwrap_err();
        assert_eq!(b, ChooseError::NotFound, "no cairn-* partitions");
        let b = choose(&disks, Want::Disk([7; 16])).unwrap();
        assert_eq!(b.partitions.get("photos").map(String::as_str), Some("/dev/sda1"), "the first one");
    }

    #[test]
    fn a_disk_that_appears_late_is_waited_for() {
        let f = Fake::new("late");
        let roots = f.roots.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let f = Fake { roots };
            // Partitions first, the disk (its GUID) last: the disk matches
            // only once whole, so a scan between two of this thread's
            // writes cannot see it with some of its partitions (the test
            // is about the wait, not about a half-written fake).
            for (n, p) in SYS.iter().enumerate() {
                f.part("sda", &format!("sda{}", n + 1), p, true);
            }
            f.disk("sda", Some(5), 512);
            std::mem::forget(f); // the outer Fake removes the tree
        });
        let start = Instant::now();
        let mut naps = Vec::new();
        let mut nap = |left: Duration| {
            naps.push(left);
            std::thread::sleep(left.min(Duration::from_millis(20)));
        };
        let b = wait_in(&f.roots, Duration::from_secs(10), Want::Disk([5; 16]), &mut nap).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
        // Each nap is told the time left, which only shrinks.
        assert!(!naps.is_empty() && naps.windows(2).all(|w| w[1] < w[0]) && naps[0] <= Duration::from_secs(10));
        assert_eq!((b.disk.as_str(), b.partitions.len()), ("sda", 4));
        writer.join().unwrap();

        // Nothing by the timeout: refused after waiting it out.
        let f = Fake::new("never");
        let mut nap = |left: Duration| std::thread::sleep(left.min(Duration::from_millis(20)));
        let start = Instant::now();
        assert_eq!(
            wait_in(&f.roots, Duration::from_millis(100), Want::Disk([5; 16]), &mut nap),
            Err(WaitError::Choose(ChooseError::NotFound))
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        // The disk came but lacks required partitions.
        f.disk("nvme0n1", Some(5), 512);
        f.part("nvme0n1", "nvme0n1p1", "cairn-state", true);
        assert_eq!(
            wait_in(&f.roots, Duration::from_millis(50), Want::Disk([5; 16]), &mut nap),
            Err(WaitError::Missing { disk: "nvme0n1".into(), missing: vec!["cairn-manifest-a", "cairn-manifest-b"] })
        );
    }
}
