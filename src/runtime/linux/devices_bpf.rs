//! Device rules on cgroup v2: v2 has no devices controller; access to device nodes is
//! decided by an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the
//! cgroup (what runc and systemd do). This builds that program from the same rules the
//! v1 controller takes, so both hierarchies enforce one policy.
//!
//! The kernel calls the program with `struct bpf_cgroup_dev_ctx { u32 access_type;
//! u32 major; u32 minor; }`, `access_type` being `access << 16 | type` (type: block 1,
//! char 2; access: mknod 1, read 2, write 4); it returns 1 to allow, 0 to refuse.
//! Rules are tried last first and the first match decides, like the v1 list after a
//! "deny all": later, more specific rules win. No rule matching refuses.

use super::cgroups::DeviceRule;
use super::BpfInsn;

// Opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 holds the context; r2 type, r3 access, r4 major, r5 minor, r6 scratch.
const CTX: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The access bits of `rwm`.
fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// The checks of one rule, each jumping past the rule's end (`skip` instructions after
/// it) on a mismatch, then "return allow".
fn rule_block(r: &DeviceRule) -> Vec<BpfInsn> {
    // Conditions first, built with placeholder offsets, then patched.
    let mut checks: Vec<BpfInsn> = Vec::new();
    match r.typ {
        'b' => checks.push(insn(JNE_K, TYPE, 0, 0, 1)),
        'c' => checks.push(insn(JNE_K, TYPE, 0, 0, 2)),
        _ => {}
    }
    let bits = access_bits(&r.access);
    if r.allow {
        // Allowed only if every requested bit is in the rule.
        checks.push(insn(MOV64_X, SCRATCH, ACCESS, 0, 0));
        checks.push(insn(AND64_K, SCRATCH, 0, 0, !bits & 7));
        checks.push(insn(JNE_K, SCRATCH, 0, 0, 0));
    } else {
        // Refused if any requested bit is in the rule.
        checks.push(insn(MOV64_X, SCRATCH, ACCESS, 0, 0));
        checks.push(insn(AND64_K, SCRATCH, 0, 0, bits));
        checks.push(insn(JEQ_K, SCRATCH, 0, 0, 0));
    }
    if let Some(major) = r.major {
        checks.push(insn(JNE_K, MAJOR, 0, 0, major as i32));
    }
    if let Some(minor) = r.minor {
        checks.push(insn(JNE_K, MINOR, 0, 0, minor as i32));
    }
    checks.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow)));
    checks.push(insn(EXIT, 0, 0, 0, 0));
    // A jump's offset counts from the next instruction: to the first one after the block.
    let len = checks.len();
    for (i, c) in checks.iter_mut().enumerate() {
        if c.code == JNE_K || c.code == JEQ_K {
            c.off = (len - i - 1) as i16;
        }
    }
    checks
}

/// The program enforcing `rules`.
pub fn program(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, TYPE, CTX, 0, 0),
        insn(MOV64_X, ACCESS, TYPE, 0, 0),
        insn(AND64_K, TYPE, 0, 0, 0xffff),
        insn(RSH64_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, CTX, 4, 0),
        insn(LDX_MEM_W, MINOR, CTX, 8, 0),
    ];
    for r in rules.iter().rev() {
        p.extend(rule_block(r));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on one device access the way the kernel would: a tiny interpreter
    /// for the instructions `program` emits, so the policy is tested without a v2 host.
    fn run(program: &[BpfInsn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access << 16 | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = i.imm as i64 as u64,
                AND64_K => r[dst] &= i.imm as i64 as u64,
                RSH64_K => r[dst] >>= i.imm,
                JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JEQ_K if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
                JNE_K | JEQ_K => {}
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            typ,
            major,
            minor,
            access: access.into(),
        }
    }

    const CHAR: u32 = 2;
    const BLOCK: u32 = 1;
    const MKNOD: u32 = 1;
    const READ: u32 = 2;
    const WRITE: u32 = 4;

    #[test]
    fn the_default_rules_allow_the_standard_devices_and_mknod_only() {
        let rules = vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', None, None, "m"),
            rule(true, 'b', None, None, "m"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(true, 'c', Some(136), None, "rwm"),
        ];
        let p = program(&rules);
        assert_eq!(run(&p, CHAR, READ | WRITE, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, CHAR, READ, 136, 7), 1, "a pts");
        assert_eq!(run(&p, CHAR, READ, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, BLOCK, READ, 254, 0), 0, "a host disk");
        assert_eq!(run(&p, BLOCK, MKNOD, 254, 0), 1, "mknod alone is allowed");
        assert_eq!(run(&p, BLOCK, MKNOD | READ, 254, 0), 0);
        assert_eq!(run(&p, CHAR, MKNOD, 10, 200), 1);
    }

    #[test]
    fn allow_all_allows_and_no_rule_refuses() {
        let p = program(&[rule(true, 'a', None, None, "rwm")]);
        assert_eq!(run(&p, BLOCK, READ | WRITE, 8, 0), 1);
        let p = program(&[]);
        assert_eq!(run(&p, CHAR, READ, 1, 3), 0);
    }

    #[test]
    fn a_later_deny_wins_over_an_earlier_allow() {
        let p = program(&[
            rule(true, 'c', Some(1), None, "rwm"),
            rule(false, 'c', Some(1), Some(1), "rw"),
        ]);
        assert_eq!(run(&p, CHAR, READ, 1, 1), 0);
        assert_eq!(run(&p, CHAR, READ, 1, 5), 1);
    }
}
