//! The cgroup v2 device program: which device nodes a container may open
//! or create, as runc, crun and youki enforce it. cgroup v2 has no
//! `devices.allow` file; the kernel asks a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the cgroup on every open and mknod of a device node
//! (return 1: allowed, 0: EPERM).
//!
//! The instructions are generated here (pure, unit-tested against a small
//! interpreter in the tests); [`Program::load`] loads them with
//! `bpf(BPF_PROG_LOAD)` and [`Program::attach`] attaches them to the
//! container's cgroup directory with `bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE)`. Every rule allows read, write
//! and mknod (rwm); everything not listed is refused.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{self, SysError, SysResult};

/// Device type as the program sees it (`BPF_DEVCG_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Block device.
    Block = 1,
    /// Character device.
    Char = 2,
}

/// One allowed device: type, major and minor (`None`: any minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Block or character.
    pub kind: Kind,
    /// Major number.
    pub major: u32,
    /// Minor number, or any.
    pub minor: Option<u32>,
}

/// Major numbers of devpts' pty slaves (`UNIX98_PTY_SLAVE_MAJOR` 136 and
/// the 7 after it, `UNIX98_PTY_MAJOR_COUNT` = 8).
pub const PTS_MAJORS: core::ops::RangeInclusive<u32> = 136..=143;

/// What every container may use: null, zero, full, random, urandom, tty,
/// ptmx and its own devpts' ptys. Not /dev/console (5:1).
pub fn default_rules() -> Vec<Rule> {
    let c = |major, minor| Rule { kind: Kind::Char, major, minor: Some(minor) };
    let mut r = vec![c(1, 3), c(1, 5), c(1, 7), c(1, 8), c(1, 9), c(5, 0), c(5, 2)];
    r.extend(PTS_MAJORS.map(|major| Rule { kind: Kind::Char, major, minor: None }));
    r
}

/// One eBPF instruction (`struct bpf_insn`, 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    /// Jump offset or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// Opcodes used (classic names from linux/bpf.h).
pub mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_AND | BPF_K`: dst = (u32)(dst & imm).
    pub const AND32_K: u8 = 0x54;
    /// `BPF_JMP | BPF_JNE | BPF_K`: if dst != imm, pc += off.
    pub const JNE_K: u8 = 0x55;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`: dst = imm.
    pub const MOV64_K: u8 = 0xb7;
    /// `BPF_JMP | BPF_EXIT`: return r0.
    pub const EXIT: u8 = 0x95;
}

/// Offsets in `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

/// The program for `rules`: r2 = device type (low 16 bits of
/// access_type), r4 = major, r5 = minor; one block per rule that returns 1
/// when every field matches and jumps to the next block otherwise; 0 at
/// the end.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(op::LDX_W, R2, R1, CTX_ACCESS_TYPE, 0),
        insn(op::AND32_K, R2, 0, 0, 0xffff),
        insn(op::LDX_W, R4, R1, CTX_MAJOR, 0),
        insn(op::LDX_W, R5, R1, CTX_MINOR, 0),
    ];
    for r in rules {
        // Each check skips the rest of this block: the remaining checks
        // and the two instructions that return 1.
        let checks: Vec<(u8, i32)> =
            [Some((R2, r.kind as i32)), Some((R4, r.major as i32)), r.minor.map(|m| (R5, m as i32))]
                .into_iter()
                .flatten()
                .collect();
        let n = checks.len();
        for (i, (reg, value)) in checks.into_iter().enumerate() {
            let skip = (n - i - 1 + 2) as i16;
            p.push(insn(op::JNE_K, reg, 0, skip, value));
        }
        p.push(insn(op::MOV64_K, R0, 0, 0, 1));
        p.push(insn(op::EXIT, 0, 0, 0, 0));
    }
    p.push(insn(op::MOV64_K, R0, 0, 0, 0));
    p.push(insn(op::EXIT, 0, 0, 0, 0));
    p
}

/// The rule for the host device node `host` (its type and numbers), as a
/// manifest device gets it.
pub fn rule_for(host: &str) -> SysResult<Rule> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(host).map_err(|e| SysError {
        op: "stat device for the device program",
        arg: host.into(),
        errno: e.raw_os_error().unwrap_or(libc::ENOENT),
    })?;
    let kind = if meta.file_type().is_block_device() {
        Kind::Block
    } else if meta.file_type().is_char_device() {
        Kind::Char
    } else {
        return Err(SysError { op: "device program: not a device node", arg: host.into(), errno: libc::ENOTBLK });
    };
    let rdev = meta.rdev() as libc::dev_t;
    Ok(Rule { kind, major: libc::major(rdev), minor: Some(libc::minor(rdev)) })
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// A cgroup below may attach a program of its own, which replaces this one there.
const BPF_F_ALLOW_OVERRIDE: u32 = 1;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel
/// takes a shorter attr and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// A device program loaded into the kernel, to be attached to any number
/// of cgroups (or to one cgroup again at every start).
#[derive(Debug)]
pub struct Program {
    /// The rules it was made from.
    rules: Vec<Rule>,
    /// The program's descriptor (the kernel's is close-on-exec).
    fd: OwnedFd,
}

impl Program {
    /// Load the program for `rules` (`name`: what errors name).
    pub fn load(rules: &[Rule], name: &str) -> SysResult<Self> {
        let insns = program(rules);
        let license = c"GPL";
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(b"cairn_devices".iter()) {
            *d = *s;
        }
        let load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            ..ProgLoadAttr::default()
        };
        // SAFETY: `load` is a valid bpf_attr prefix for BPF_PROG_LOAD; the
        // instruction array and license it points to outlive the call. The
        // kernel copies both before returning.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &load, "bpf load device program", name)? };
        // SAFETY: `fd` is a fresh descriptor the kernel just returned to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { rules: rules.to_vec(), fd })
    }

    /// The rules it enforces.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Attach it to the cgroup directory `cgroup_dir` (named `name` in
    /// errors). Attached without flags, it replaces the program an earlier
    /// start attached to the same cgroup (this one, or one for other
    /// rules), and nothing below the cgroup can attach one of its own. The
    /// cgroup holds its own reference: the program stays attached when
    /// this value is dropped.
    pub fn attach(&self, cgroup_dir: &OwnedFd, name: &str) -> SysResult<()> {
        self.attach_with(cgroup_dir, name, 0)
    }

    fn attach_with(&self, cgroup_dir: &OwnedFd, name: &str, attach_flags: u32) -> SysResult<()> {
        let attach = ProgAttachAttr {
            target_fd: cgroup_dir.as_raw_fd() as u32,
            attach_bpf_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags,
            ..ProgAttachAttr::default()
        };
        // SAFETY: `attach` is a valid bpf_attr for BPF_PROG_ATTACH; both
        // descriptors are open for the duration of the call.
        unsafe { bpf(BPF_PROG_ATTACH, &attach, "bpf attach device program", name) }.map(drop)
    }
}

/// bpf(2): `cmd` with the attribute struct `attr`, its size passed; a
/// failure is `op` on `name`.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` prefix for `cmd`, and every pointer
/// and descriptor in it must stay valid for the duration of the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &A, op: &'static str, name: &str) -> SysResult<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the size is its own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, core::mem::size_of::<A>()) };
    if rc < 0 {
        return Err(SysError { op, arg: name.into(), errno: sys::errno() });
    }
    Ok(rc)
}

/// Device programs loaded so far, by their rules: loading runs the
/// verifier and the JIT (10 to 20 ms under emulation), a cost paid once per
/// rule set, not at every start of every container. Most containers have
/// the default rules and share one program.
#[derive(Debug, Default)]
pub struct Programs {
    /// Oldest first.
    loaded: Vec<Program>,
    /// The cgroup that holds the program for [`default_rules`] for every
    /// cgroup below it ([`Programs::attach_defaults_to`]).
    defaults_at: Option<String>,
}

impl Programs {
    /// At most this many are kept loaded (the oldest goes first): a device
    /// node that comes back with new numbers makes a new rule set, and the
    /// old ones must not pile up. A manifest has at most 16 containers.
    pub const KEPT: usize = 32;

    /// No program loaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The program for `rules`, loaded now if it is not yet (`name` is
    /// what a load error names). Dropping one from the cache does not
    /// detach it from a cgroup: the cgroup holds its own reference.
    pub fn get(&mut self, rules: &[Rule], name: &str) -> SysResult<&Program> {
        let at = match self.loaded.iter().position(|p| p.rules() == rules) {
            Some(i) => i,
            None => {
                let program = Program::load(rules, name)?;
                if self.loaded.len() >= Self::KEPT {
                    self.loaded.remove(0);
                }
                self.loaded.push(program);
                self.loaded.len() - 1
            }
        };
        self.loaded.get(at).ok_or(SysError { op: "device program cache", arg: name.into(), errno: libc::ENOENT })
    }

    /// A cache holding the program for [`default_rules`], loaded now; on
    /// a failed load, an empty cache and the error (the first start then
    /// loads it, and any error is that start's). [`crate::ahead`] calls
    /// this on a thread of its own during the boot.
    pub fn with_defaults() -> (Self, SysResult<()>) {
        let mut programs = Self::new();
        let loaded = programs.get(&default_rules(), "default device rules").map(|_| ());
        (programs, loaded)
    }

    /// Attach the program for [`default_rules`] (loaded now if it is not
    /// yet) to the cgroup `parent`, for every cgroup below it: the kernel
    /// gives a new cgroup its parent's programs when it makes it, so a
    /// container with the default rules needs no attach of its own at each
    /// start (a `bpf` call, 0.4 to 14 ms under emulation). It is attached
    /// with `BPF_F_ALLOW_OVERRIDE`: a container with devices of its own
    /// attaches its program to its cgroup, which then replaces this one
    /// there (the kernel runs a cgroup's own program instead of inherited
    /// ones attached that way). No process may be in `parent` itself.
    pub fn attach_defaults_to(&mut self, parent: &str) -> SysResult<()> {
        let dir = sys::open(parent, libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.get(&default_rules(), parent)?.attach_with(&dir, parent, BPF_F_ALLOW_OVERRIDE)?;
        self.defaults_at = Some(parent.to_owned());
        Ok(())
    }

    /// Whether the cgroup at `path` gets the program for `rules` from its
    /// parent (see [`Programs::attach_defaults_to`]): the default rules,
    /// and a parent that holds them.
    pub fn inherited(&self, path: &str, rules: &[Rule]) -> bool {
        let parent = path.rsplit_once('/').map(|(p, _)| p);
        parent.is_some() && parent == self.defaults_at.as_deref() && rules == default_rules()
    }

    /// How many are loaded (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.loaded.len()
    }

    /// Whether none is (for tests).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `prog` on one access the way the kernel would: r1 points to the
    /// context. Only the opcodes [`program`] emits are known; anything else,
    /// a jump out of the program or a fall off its end fails the test.
    fn run(prog: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "program does not end");
            let i = prog.get(pc).unwrap_or_else(|| panic!("pc {pc} is past the end"));
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                op::LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    assert!(i.off >= 0 && i.off % 4 == 0 && i.off < 12, "bad context offset {}", i.off);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                op::AND32_K => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
                op::JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                op::MOV64_K => r[dst] = i.imm as i64 as u64,
                op::EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const CHR: u32 = 2;
    const BLK: u32 = 1;
    const RWM: [u32; 3] = [1, 2, 4];

    #[test]
    fn the_defaults_allow_the_standard_nodes_and_nothing_else() {
        let p = program(&default_rules());
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, 0), (136, 7), (143, 255)] {
            for access in RWM {
                assert_eq!(run(&p, CHR, access, major, minor), 1, "c {major}:{minor} access {access}");
            }
        }
        for (kind, major, minor) in [
            (CHR, 5, 1),    // console
            (CHR, 1, 1),    // mem
            (CHR, 1, 2),    // kmem
            (CHR, 1, 4),    // port
            (CHR, 4, 0),    // tty0
            (CHR, 10, 200), // tun
            (CHR, 135, 0),
            (CHR, 144, 0),
            (BLK, 254, 0), // virtio disk
            (BLK, 1, 3),   // a block device with null's numbers
            (BLK, 136, 0),
            (BLK, 8, 0),
        ] {
            for access in RWM {
                assert_eq!(run(&p, kind, access, major, minor), 0, "type {kind} {major}:{minor}");
            }
        }
    }

    #[test]
    fn a_manifest_device_is_allowed_with_its_own_type_and_numbers() {
        let mut rules = default_rules();
        rules.push(Rule { kind: Kind::Block, major: 254, minor: Some(9) });
        let p = program(&rules);
        assert_eq!(run(&p, BLK, 2, 254, 9), 1);
        assert_eq!(run(&p, BLK, 4, 254, 9), 1);
        assert_eq!(run(&p, BLK, 2, 254, 0), 0, "the whole disk is another device");
        assert_eq!(run(&p, CHR, 2, 254, 9), 0, "a char device with the same numbers is not it");
        assert_eq!(run(&p, CHR, 2, 1, 3), 1);
    }

    #[test]
    fn an_empty_list_refuses_everything() {
        let p = program(&[]);
        assert_eq!(p.len(), 6);
        assert_eq!(run(&p, CHR, 2, 1, 3), 0);
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        assert_eq!(core::mem::size_of::<Insn>(), 8);
        let p = program(&[Rule { kind: Kind::Char, major: 1, minor: Some(3) }]);
        // r2 = *(u32 *)(r1 + 0): dst 2 in the low nibble, src 1 in the high.
        assert_eq!(p[0], Insn { code: 0x61, regs: 0x12, off: 0, imm: 0 });
        // if r2 != 2 goto +4 (past the major, the minor and the return).
        assert_eq!(p[4], Insn { code: 0x55, regs: 0x02, off: 4, imm: 2 });
        assert_eq!(p[6], Insn { code: 0x55, regs: 0x05, off: 2, imm: 3 });
        assert_eq!(p[p.len() - 2], Insn { code: 0xb7, regs: 0, off: 0, imm: 0 });
        assert_eq!(p[p.len() - 1].code, 0x95);
    }

    #[test]
    fn host_nodes_give_their_type_and_numbers() {
        assert_eq!(rule_for("/dev/null"), Ok(Rule { kind: Kind::Char, major: 1, minor: Some(3) }));
        assert_eq!(rule_for("/").map_err(|e| e.errno), Err(libc::ENOTBLK));
        assert_eq!(rule_for("/nonexistent").map_err(|e| e.errno), Err(libc::ENOENT));
    }

    /// Loads real programs (root; skipped where bpf(2) is refused).
    #[test]
    fn programs_load_once_per_rule_set_and_keep_at_most_kept() {
        let mut p = Programs::new();
        let defaults = default_rules();
        match p.get(&defaults, "test") {
            Ok(_) => {}
            Err(e) if e.errno == libc::EPERM || e.errno == libc::ENOSYS => return,
            Err(e) => panic!("{e}"),
        }
        let fd = p.get(&defaults, "test").map(|x| x.fd.as_raw_fd()).unwrap();
        assert_eq!(p.len(), 1, "the same rules load once");
        assert_eq!(p.get(&defaults, "test").map(|x| x.fd.as_raw_fd()).unwrap(), fd);
        let disk = |minor| Rule { kind: Kind::Block, major: 254, minor: Some(minor) };
        let with_disk = [defaults.clone(), vec![disk(0)]].concat();
        p.get(&with_disk, "test").unwrap();
        assert_eq!(p.len(), 2);
        for minor in 1..=Programs::KEPT as u32 {
            p.get(&[defaults.clone(), vec![disk(minor)]].concat(), "test").unwrap();
        }
        assert_eq!(p.len(), Programs::KEPT, "the oldest are dropped");
        assert!(p.loaded.iter().all(|x| x.rules() != defaults.as_slice()), "the oldest went first");
    }

    /// The default program is in the cache, where the first start finds
    /// it (root; skipped where bpf(2) is refused).
    #[test]
    fn the_default_program_is_loaded_once() {
        let (mut p, loaded) = Programs::with_defaults();
        if let Err(e) = loaded {
            // Refused here: the cache is empty, as a failed load leaves it.
            assert!(p.is_empty(), "{e}");
            assert!(Programs::new().get(&default_rules(), "test").is_err(), "with_defaults lost a loadable program");
            return;
        }
        assert_eq!(p.len(), 1);
        let fd = p.loaded.first().map(|x| x.fd.as_raw_fd()).unwrap();
        assert_eq!(p.get(&default_rules(), "test").map(|x| x.fd.as_raw_fd()).unwrap(), fd, "found, not loaded again");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn only_the_default_rules_below_the_parent_that_holds_them_are_inherited() {
        let mut p = Programs::new();
        let defaults = default_rules();
        assert!(!p.inherited("/sys/fs/cgroup/cairn/web", &defaults), "no parent holds them yet");
        p.defaults_at = Some("/sys/fs/cgroup/cairn".into());
        assert!(p.inherited("/sys/fs/cgroup/cairn/web", &defaults));
        let mut more = defaults.clone();
        more.push(Rule { kind: Kind::Block, major: 254, minor: Some(9) });
        assert!(!p.inherited("/sys/fs/cgroup/cairn/web", &more), "devices of its own: its own program");
        assert!(!p.inherited("/sys/fs/cgroup/bench/web", &defaults), "another parent");
        assert!(!p.inherited("/sys/fs/cgroup/cairn", &defaults), "the parent itself");
        assert!(!p.inherited("/sys/fs/cgroup/cairn/web/probe", &defaults), "not a child of the parent");
    }
}
