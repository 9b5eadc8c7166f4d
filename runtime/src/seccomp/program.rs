//! A seccomp policy (what each syscall number gets) and its compilation to
//! one classic BPF program that finds a number's rule by binary search.
//!
//! The kernel runs the program at every syscall whose answer it cannot
//! cache, and once per syscall number when the filter is installed (to
//! find the numbers it may cache: every number but those with an argument
//! rule). A linear chain of comparisons costs each run as many steps as
//! the rules before the number; the search costs about 2 log2(rules):
//! for the default policy's 66 rules, 13 instructions a number on average
//! and 17 at most, where seccompiler's linear program of before ran 127 on
//! average.
//!
//! The program:
//! 1. another architecture's syscall (i386 on x86_64, arm32 on aarch64)
//!    kills the process;
//! 2. numbers from `unknown_from` on (and x32's, which have bit 30 set)
//!    answer ENOSYS;
//! 3. a binary search over the numbers that have a rule, on `jge`, down to
//!    runs of at most [`RUN`] numbers compared one by one; a number without
//!    a rule is allowed, one with a rule runs the rule's own instructions,
//!    which end in a return.

use std::collections::BTreeMap;

/// When a syscall's rule answers its errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Whatever the arguments.
    Always,
    /// Argument `arg` has every bit of `mask` set (all 64 bits compared).
    ArgHasAll { arg: u8, mask: u64 },
    /// The low 32 bits of argument `arg` are one of `values` (an `ioctl`
    /// request: the kernel reads it as an unsigned int).
    ArgLowIn { arg: u8, values: Vec<u32> },
    /// The low 32 bits of argument `arg` are none of `values`.
    ArgLowNoneOf { arg: u8, values: Vec<u32> },
}

/// What one syscall number gets: `errno` when `when` holds, else allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub when: When,
    pub errno: u32,
}

/// The whole filter, before compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `AUDIT_ARCH_*` of the calls allowed to run at all.
    pub arch: u32,
    /// This number and every one above answers ENOSYS.
    pub unknown_from: u32,
    /// Numbers that have a rule; all others are allowed. A rule for a
    /// number from `unknown_from` on never runs (ENOSYS comes first).
    pub rules: BTreeMap<u32, Rule>,
}

/// Why a policy does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// seccomp_data has six arguments.
    #[error("syscall {nr}: argument {arg} does not exist (0 to 5)")]
    NoSuchArgument { nr: u32, arg: u8 },
    /// A rule's instructions do not fit a conditional jump (255).
    #[error("syscall {nr}: its rule is {len} instructions, more than a jump can pass")]
    RuleTooLong { nr: u32, len: usize },
    /// More than the kernel's BPF_MAXINSNS.
    #[error("the program is {0} instructions, more than the kernel's 4096")]
    TooLong(usize),
}

/// The kernel's limit on one program (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;
/// Numbers compared one by one at the end of a search.
pub const RUN: usize = 4;

// Classic BPF opcodes (linux/bpf_common.h).
pub(crate) const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
pub(crate) const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub(crate) const JA: u16 = 0x05; // BPF_JMP | BPF_JA
pub(crate) const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub(crate) const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
pub(crate) const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// Argument `i`'s low and high 32 bits (both architectures are little-endian).
const fn arg_low(i: u8) -> u32 {
    16 + 8 * i as u32
}
const fn arg_high(i: u8) -> u32 {
    arg_low(i) + 4
}

pub const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
pub const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
pub const fn errno(e: u32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e & libc::SECCOMP_RET_DATA)
}

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret(k: u32) -> libc::sock_filter {
    insn(RET_K, k, 0, 0)
}

/// Compile `policy` into one program.
pub fn compile(policy: &Policy) -> Result<Vec<libc::sock_filter>, ProgramError> {
    let mut rules = Vec::with_capacity(policy.rules.len());
    for (&nr, rule) in policy.rules.range(..policy.unknown_from) {
        rules.push((nr, rule_body(nr, rule)?));
    }
    let mut prog = vec![
        insn(LD_W_ABS, DATA_ARCH, 0, 0),
        insn(JEQ_K, policy.arch, 1, 0),
        ret(KILL_PROCESS),
        insn(LD_W_ABS, DATA_NR, 0, 0),
        // Compared unsigned: x32's numbers (bit 30 set) are above too.
        insn(JGE_K, policy.unknown_from, 0, 1),
        ret(errno(libc::ENOSYS as u32)),
    ];
    search(&rules, &mut prog)?;
    if prog.len() > MAX_INSNS {
        return Err(ProgramError::TooLong(prog.len()));
    }
    Ok(prog)
}

/// The instructions of one rule, run with the syscall number in A; each
/// path ends in a return.
fn rule_body(nr: u32, rule: &Rule) -> Result<Vec<libc::sock_filter>, ProgramError> {
    let deny = ret(errno(rule.errno));
    let arg_ok = |arg: u8| if arg < 6 { Ok(arg) } else { Err(ProgramError::NoSuchArgument { nr, arg }) };
    let body = match &rule.when {
        When::Always => vec![deny],
        When::ArgHasAll { arg, mask } => {
            let arg = arg_ok(*arg)?;
            let halves = [(arg_high(arg), (mask >> 32) as u32), (arg_low(arg), *mask as u32)];
            let halves: Vec<_> = halves.into_iter().filter(|(_, m)| *m != 0).collect();
            let mut body = Vec::new();
            for (k, (offset, m)) in halves.iter().enumerate() {
                // A half without every bit: allowed (the last instruction).
                let left = (halves.len() - 1 - k) * 3 + 1;
                body.push(insn(LD_W_ABS, *offset, 0, 0));
                body.push(insn(AND_K, *m, 0, 0));
                body.push(insn(JEQ_K, *m, 0, jump(nr, left)?));
            }
            body.push(deny);
            body.push(ret(ALLOW));
            body
        }
        When::ArgLowIn { arg, values } | When::ArgLowNoneOf { arg, values } => {
            let arg = arg_ok(*arg)?;
            let inside = matches!(rule.when, When::ArgLowIn { .. });
            // A match jumps past the other comparisons and the first return.
            let (on_match, otherwise) = if inside { (deny, ret(ALLOW)) } else { (ret(ALLOW), deny) };
            let mut body = vec![insn(LD_W_ABS, arg_low(arg), 0, 0)];
            for (k, v) in values.iter().enumerate() {
                body.push(insn(JEQ_K, *v, jump(nr, values.len() - k)?, 0));
            }
            body.push(otherwise);
            body.push(on_match);
            body
        }
    };
    Ok(body)
}

fn jump(nr: u32, len: usize) -> Result<u8, ProgramError> {
    u8::try_from(len).map_err(|_| ProgramError::RuleTooLong { nr, len })
}

/// Append the search over `rules` (sorted by number), the number in A.
fn search(rules: &[(u32, Vec<libc::sock_filter>)], prog: &mut Vec<libc::sock_filter>) -> Result<(), ProgramError> {
    if rules.len() <= RUN {
        for (nr, body) in rules {
            prog.push(insn(JEQ_K, *nr, 0, jump(*nr, body.len())?));
            prog.extend_from_slice(body);
        }
        prog.push(ret(ALLOW));
        return Ok(());
    }
    let (low, high) = rules.split_at(rules.len() / 2);
    let pivot = high.first().map_or(0, |(nr, _)| *nr);
    let mut left = Vec::new();
    search(low, &mut left)?;
    match u8::try_from(left.len()) {
        // Numbers from the pivot on: past the lower half.
        Ok(skip) => prog.push(insn(JGE_K, pivot, skip, 0)),
        Err(_) => {
            prog.push(insn(JGE_K, pivot, 0, 1));
            prog.push(insn(JA, u32::try_from(left.len()).map_err(|_| ProgramError::TooLong(left.len()))?, 0, 0));
        }
    }
    prog.extend(left);
    search(high, prog)
}

/// Test helpers: the policy's meaning, and a classic BPF interpreter for
/// the instructions this module and seccompiler emit.
#[cfg(test)]
pub(crate) mod check {
    use super::*;

    /// One syscall as seccomp_data has it.
    #[derive(Debug, Clone, Copy)]
    pub struct Call {
        pub arch: u32,
        pub nr: u32,
        pub args: [u64; 6],
    }

    /// What `policy` means for `call`.
    pub fn meaning(policy: &Policy, c: &Call) -> u32 {
        if c.arch != policy.arch {
            return KILL_PROCESS;
        }
        if c.nr >= policy.unknown_from {
            return errno(libc::ENOSYS as u32);
        }
        let Some(rule) = policy.rules.get(&c.nr) else { return ALLOW };
        let low = |arg: u8| c.args[usize::from(arg)] as u32;
        let holds = match &rule.when {
            When::Always => true,
            When::ArgHasAll { arg, mask } => c.args[usize::from(*arg)] & mask == *mask,
            When::ArgLowIn { arg, values } => values.contains(&low(*arg)),
            When::ArgLowNoneOf { arg, values } => !values.contains(&low(*arg)),
        };
        if holds {
            errno(rule.errno)
        } else {
            ALLOW
        }
    }

    /// Run `prog` on `call`; panics on an instruction it does not know, a
    /// jump out of the program, or a program that ends without a return.
    pub fn run(prog: &[libc::sock_filter], c: &Call) -> u32 {
        trace(prog, c).0
    }

    /// [`run`], and how many instructions ran.
    pub fn trace(prog: &[libc::sock_filter], c: &Call) -> (u32, usize) {
        let word = |k: u32| -> u32 {
            match k {
                0 => c.nr,
                4 => c.arch,
                16..=63 if k.is_multiple_of(4) => {
                    let a = c.args[(k as usize - 16) / 8];
                    if k.is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                _ => panic!("load of seccomp_data offset {k}"),
            }
        };
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = prog.get(pc).unwrap_or_else(|| panic!("ran off the program at {pc}"));
            pc += 1;
            steps += 1;
            let cond = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_W_ABS => a = word(i.k),
                AND_K => a &= i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += cond(a == i.k),
                JGE_K => pc += cond(a >= i.k),
                0x25 => pc += cond(a > i.k),      // JGT
                0x45 => pc += cond(a & i.k != 0), // JSET
                RET_K => return (i.k, steps),
                code => panic!("instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// Calls that exercise every rule of `policy` and the numbers between:
    /// each number around each rule and boundary, with arguments of every
    /// value the rules name, each value's neighbours and high bits set.
    pub fn calls(policy: &Policy, other_arch: u32) -> Vec<Call> {
        let mut values: Vec<u64> = vec![0, 1, u64::MAX, 1 << 32, 0xffff_ffff];
        for r in policy.rules.values() {
            match &r.when {
                When::Always => {}
                When::ArgHasAll { mask, .. } => {
                    values.extend([*mask, mask | 1, mask & !(mask & mask.wrapping_neg()), mask | (1 << 40)]);
                }
                When::ArgLowIn { values: vs, .. } | When::ArgLowNoneOf { values: vs, .. } => {
                    for v in vs {
                        let v = u64::from(*v);
                        values.extend([v, v + 1, v.wrapping_sub(1) & 0xffff_ffff, v | (1 << 32), v | (0xdead << 40)]);
                    }
                }
            }
        }
        values.sort_unstable();
        values.dedup();
        let mut numbers: Vec<u32> = (0..policy.unknown_from + 8).collect();
        numbers.extend([0x4000_0000, 0x4000_0000 | 165, u32::MAX, 1000]);
        let mut calls = Vec::new();
        for &nr in &numbers {
            let args: &[u64] = if policy.rules.contains_key(&nr) { &values } else { &[0, u64::MAX] };
            for &v in args {
                for slot in 0..2 {
                    let mut a = [0u64; 6];
                    a[slot] = v;
                    calls.push(Call { arch: policy.arch, nr, args: a });
                }
            }
        }
        calls.push(Call { arch: other_arch, nr: 0, args: [0; 6] });
        calls.push(Call { arch: other_arch, nr: 1, args: [0; 6] });
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::check::{calls, meaning, run, trace, Call};
    use super::*;

    fn policy(rules: &[(u32, When)]) -> Policy {
        Policy {
            arch: 0xc000_003e,
            unknown_from: 471,
            rules: rules.iter().map(|(nr, when)| (*nr, Rule { when: when.clone(), errno: 1 })).collect(),
        }
    }

    fn agrees(p: &Policy) -> usize {
        let prog = compile(p).unwrap_or_else(|e| panic!("{e}"));
        let calls = calls(p, 0x4000_0003);
        for c in &calls {
            assert_eq!(run(&prog, c), meaning(p, c), "{c:?}");
        }
        calls.len()
    }

    #[test]
    fn every_shape_of_search_agrees_with_the_policy() {
        // From no rule to many: every split of the search, long lower
        // halves (a `ja`) included.
        for n in [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 90, 300] {
            let rules: Vec<(u32, When)> = (0..n).map(|i| (i * 3 % 470, When::Always)).collect();
            let p = policy(&rules);
            assert_eq!(p.rules.len(), n as usize);
            agrees(&p);
        }
    }

    #[test]
    fn argument_rules_agree_with_the_policy() {
        let p = policy(&[
            (16, When::ArgLowIn { arg: 1, values: vec![0x5412, 0x541c, 0x401c_5820] }),
            (56, When::ArgHasAll { arg: 0, mask: 0x1000_0000 }),
            (57, When::ArgHasAll { arg: 1, mask: 0x3_0000_0001 }),
            (58, When::ArgHasAll { arg: 0, mask: 0 }),
            (135, When::ArgLowNoneOf { arg: 0, values: vec![0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] }),
            (165, When::Always),
            (272, When::ArgHasAll { arg: 0, mask: 0x1000_0000 }),
        ]);
        assert!(agrees(&p) > 1000);
        let prog = compile(&p).unwrap_or_else(|e| panic!("{e}"));
        let call = |nr, a0, a1| Call { arch: p.arch, nr, args: [a0, a1, 0, 0, 0, 0] };
        assert_eq!(run(&prog, &call(16, 3, 0x1_0000_5412)), errno(1), "ioctl compared on its low 32 bits");
        assert_eq!(run(&prog, &call(16, 3, 0x5413)), ALLOW);
        assert_eq!(run(&prog, &call(135, 0x40000, 0)), errno(1));
        assert_eq!(run(&prog, &call(135, 0x1_0000_0008, 0)), ALLOW, "personality reads 32 bits");
        assert_eq!(run(&prog, &call(57, 0, 0x1_0000_0001)), ALLOW, "one high bit missing");
        assert_eq!(run(&prog, &call(57, 0, 0x7_0000_0001)), errno(1));
        assert_eq!(run(&prog, &call(471, 0, 0)), errno(libc::ENOSYS as u32));
        assert_eq!(run(&prog, &call(0x4000_0000 | 165, 0, 0)), errno(libc::ENOSYS as u32), "x32");
        assert_eq!(run(&prog, &Call { arch: 0x4000_0003, ..call(165, 0, 0) }), KILL_PROCESS);
    }

    #[test]
    fn a_search_costs_log_steps() {
        let rules: Vec<(u32, When)> = (0..90).map(|i| (i * 5, When::Always)).collect();
        let p = policy(&rules);
        let prog = compile(&p).unwrap_or_else(|e| panic!("{e}"));
        // 6 for the architecture and the unknown numbers, about 2 a level
        // of the search (7 levels for 90 numbers), up to 4 in the last run.
        let most = (0..471).map(|nr| trace(&prog, &Call { arch: p.arch, nr, args: [0; 6] }).1).max();
        assert!(most.is_some_and(|m| m <= 20), "{most:?} steps");
    }

    #[test]
    fn bad_policies_are_refused() {
        let p = policy(&[(3, When::ArgHasAll { arg: 6, mask: 1 })]);
        assert_eq!(compile(&p), Err(ProgramError::NoSuchArgument { nr: 3, arg: 6 }));
        // Shadowed by the unknown numbers: no instruction for it.
        let p = policy(&[(471, When::Always), (472, When::ArgHasAll { arg: 9, mask: 1 })]);
        assert_eq!(compile(&p).map(|prog| prog.len()), Ok(7));
        agrees(&p);
        let p = policy(&[(3, When::ArgLowIn { arg: 0, values: (0..300).collect() })]);
        assert!(matches!(compile(&p), Err(ProgramError::RuleTooLong { nr: 3, .. })));
    }
}
