//! SPIR-V for the Vulkan memory model, which naga declares for every module with cooperative
//! matrices but does not yet write for: its loads and stores stay *private*, and under that
//! model private accesses by different invocations are ordered by no barrier. A value one
//! invocation stores to workgroup memory and another loads after `workgroupBarrier()` is
//! then a data race that the driver's compiler may schedule as it likes (move the store
//! past the barrier, the load before it). GLSL compilers mark every access to shared
//! memory as non-private and workgroup-coherent; this pass does the same to naga's output:
//!
//! - every load (`OpLoad`, `OpCooperativeMatrixLoadKHR`) from workgroup memory or from a
//!   writable storage buffer gains `NonPrivatePointer | MakePointerVisible` at workgroup
//!   scope, and every store (`OpStore`, `OpCooperativeMatrixStoreKHR`) to them
//!   `NonPrivatePointer | MakePointerAvailable`;
//! - read-only storage buffers (decorated `NonWritable`), uniforms and function or private
//!   variables are left as they are: nothing in a dispatch writes them, or only the
//!   invocation that reads them.
//!
//! With those, naga's barriers (acquire-release over workgroup or storage memory) order
//! the accesses as WGSL means them. Modules that declare the GLSL450 memory model pass
//! through unchanged.

use std::collections::{HashMap, HashSet};

mod op {
    pub const MEMORY_MODEL: u16 = 14;
    pub const TYPE_INT: u16 = 21;
    pub const CONSTANT: u16 = 43;
    pub const VARIABLE: u16 = 59;
    pub const LOAD: u16 = 61;
    pub const STORE: u16 = 62;
    pub const COPY_MEMORY: u16 = 63;
    pub const COPY_MEMORY_SIZED: u16 = 64;
    pub const ACCESS_CHAIN: u16 = 65;
    pub const IN_BOUNDS_ACCESS_CHAIN: u16 = 66;
    pub const PTR_ACCESS_CHAIN: u16 = 67;
    pub const DECORATE: u16 = 71;
    pub const COPY_OBJECT: u16 = 83;
    pub const COOPERATIVE_MATRIX_LOAD: u16 = 4457;
    pub const COOPERATIVE_MATRIX_STORE: u16 = 4458;
}

const MEMORY_MODEL_VULKAN: u32 = 3;
const STORAGE_WORKGROUP: u32 = 4;
const STORAGE_BUFFER: u32 = 12;
const DECORATION_NON_WRITABLE: u32 = 24;
const SCOPE_WORKGROUP: u32 = 2;

/// Memory operand bits (SPIR-V's "Memory Access").
const ALIGNED: u32 = 0x2;
const MAKE_POINTER_AVAILABLE: u32 = 0x8;
const MAKE_POINTER_VISIBLE: u32 = 0x10;
const NON_PRIVATE_POINTER: u32 = 0x20;

/// Why a module could not be rewritten.
#[derive(Debug, PartialEq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SPIR-V memory-model pass: {}", self.0)
    }
}

/// One instruction: its opcode and operand words (the word count is implied).
struct Instruction {
    op: u16,
    operands: Vec<u32>,
}

fn parse(words: &[u32]) -> Result<(Vec<u32>, Vec<Instruction>), Unsupported> {
    if words.len() < 5 || words[0] != 0x0723_0203 {
        return Err(Unsupported("not a SPIR-V module".into()));
    }
    let mut out = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        if count == 0 || at + count > words.len() {
            return Err(Unsupported(format!("malformed instruction at word {at}")));
        }
        out.push(Instruction {
            op: (words[at] & 0xffff) as u16,
            operands: words[at + 1..at + count].to_vec(),
        });
        at += count;
    }
    Ok((words[..5].to_vec(), out))
}

/// Of a load or store: the operand holding its pointer, where its memory operands start,
/// and what makes it coherent (a load sees what others made available, a store makes its
/// value available). Load: type, result, pointer, [mask]; store: pointer, object, [mask];
/// the cooperative ones have a layout and a stride before the mask.
fn memory_access(opcode: u16) -> Option<(usize, usize, u32)> {
    match opcode {
        op::LOAD => Some((2, 3, MAKE_POINTER_VISIBLE)),
        op::COOPERATIVE_MATRIX_LOAD => Some((2, 5, MAKE_POINTER_VISIBLE)),
        op::STORE => Some((0, 2, MAKE_POINTER_AVAILABLE)),
        op::COOPERATIVE_MATRIX_STORE => Some((0, 4, MAKE_POINTER_AVAILABLE)),
        _ => None,
    }
}

/// The memory operands of a load or store from `at` in `operands` (absent: none), with
/// `add` set, non-private, at workgroup scope: the mask, Aligned's literal, then the scope
/// of MakePointerAvailable and of MakePointerVisible, in the order of their bits.
fn with_access(operands: &[u32], at: usize, add: u32, scope: u32) -> Result<Vec<u32>, Unsupported> {
    let mut out = operands[..at].to_vec();
    let (mask, mut rest) = match operands.get(at) {
        Some(&m) => (m, &operands[at + 1..]),
        None => (0, &[][..]),
    };
    if mask & (MAKE_POINTER_AVAILABLE | MAKE_POINTER_VISIBLE) != 0 {
        // Already written for the model: leave the access alone.
        return Ok(operands.to_vec());
    }
    if mask & !(0x1 | ALIGNED | 0x4 | NON_PRIVATE_POINTER) != 0 {
        return Err(Unsupported(format!("memory operand mask {mask:#x}")));
    }
    out.push(mask | add | NON_PRIVATE_POINTER);
    if mask & ALIGNED != 0 {
        let (&alignment, tail) = rest
            .split_first()
            .ok_or_else(|| Unsupported("Aligned without its literal".into()))?;
        out.push(alignment);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Unsupported("unexpected memory operands".into()));
    }
    if add & MAKE_POINTER_AVAILABLE != 0 {
        out.push(scope);
    }
    if add & MAKE_POINTER_VISIBLE != 0 {
        out.push(scope);
    }
    Ok(out)
}

/// `words` with every access to workgroup memory and to writable storage buffers made
/// non-private and workgroup-coherent (see the module's comment); unchanged where the
/// module does not declare the Vulkan memory model.
pub fn make_shared_accesses_coherent(words: &[u32]) -> Result<Vec<u32>, Unsupported> {
    let (mut header, mut code) = parse(words)?;
    let vulkan = code
        .iter()
        .any(|i| i.op == op::MEMORY_MODEL && i.operands.get(1) == Some(&MEMORY_MODEL_VULKAN));
    if !vulkan {
        return Ok(words.to_vec());
    }

    // The read-only storage buffers, the u32 type and its constant 2 (workgroup scope).
    let mut read_only: HashSet<u32> = HashSet::new();
    let mut uint = None;
    let mut workgroup_scope = None;
    for i in &code {
        match i.op {
            op::TYPE_INT if i.operands[1..] == [32, 0] => uint = Some(i.operands[0]),
            op::DECORATE if i.operands.get(1) == Some(&DECORATION_NON_WRITABLE) => {
                read_only.insert(i.operands[0]);
            }
            op::CONSTANT if Some(i.operands[0]) == uint && i.operands[2..] == [SCOPE_WORKGROUP] => {
                workgroup_scope.get_or_insert(i.operands[1]);
            }
            _ => {}
        }
    }
    let uint = uint.ok_or_else(|| Unsupported("no 32-bit unsigned integer type".into()))?;
    // The scope operand is an id: naga's barriers declare the constant 2; add it if not.
    let scope = match workgroup_scope {
        Some(id) => id,
        None => {
            let id = header[3];
            header[3] += 1;
            let after = code
                .iter()
                .position(|i| i.op == op::TYPE_INT && i.operands[0] == uint)
                .unwrap();
            code.insert(
                after + 1,
                Instruction {
                    op: op::CONSTANT,
                    operands: vec![uint, id, SCOPE_WORKGROUP],
                },
            );
            id
        }
    };

    // Whether each pointer id reaches memory other invocations share: a variable's storage
    // class (and writability), passed on to the pointers derived from it.
    let mut shared: HashMap<u32, bool> = HashMap::new();
    for i in &mut code {
        match i.op {
            op::VARIABLE => {
                let class = i.operands[2];
                let id = i.operands[1];
                let coherent = class == STORAGE_WORKGROUP
                    || (class == STORAGE_BUFFER && !read_only.contains(&id));
                shared.insert(id, coherent);
            }
            op::ACCESS_CHAIN
            | op::IN_BOUNDS_ACCESS_CHAIN
            | op::PTR_ACCESS_CHAIN
            | op::COPY_OBJECT => {
                let (id, base) = (i.operands[1], i.operands[2]);
                if let Some(&s) = shared.get(&base) {
                    shared.insert(id, s);
                }
            }
            op::COPY_MEMORY | op::COPY_MEMORY_SIZED
                if i.operands[..2].iter().any(|p| shared.get(p) == Some(&true)) =>
            {
                return Err(Unsupported("OpCopyMemory on shared memory".into()));
            }
            _ => {
                let Some((pointer, at, add)) = memory_access(i.op) else {
                    continue;
                };
                if shared.get(&i.operands[pointer]) != Some(&true) {
                    continue;
                }
                if i.operands.len() < at {
                    return Err(Unsupported(format!("op {} without its stride", i.op)));
                }
                i.operands = with_access(&i.operands, at, add, scope)?;
            }
        }
    }

    let mut out = header;
    for i in code {
        out.push(((i.operands.len() as u32 + 1) << 16) | i.op as u32);
        out.extend(i.operands);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with every kind of access the pass tells apart: workgroup memory stored and
    /// loaded across a barrier (scalar and cooperative), a read-only storage buffer and a
    /// writable one.
    const SOURCE: &str = "enable f16;
enable wgpu_cooperative_matrix;
@group(0) @binding(0) var<storage, read> input: array<f16>;
@group(0) @binding(1) var<storage, read_write> output: array<f32>;
var<workgroup> tile: array<f16, 256>;
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) lid: u32) {
    for (var i = 0u; i < 8u; i++) {
        tile[lid * 8u + i] = input[lid * 8u + i];
    }
    workgroupBarrier();
    let a = coopLoad<coop_mat16x16<f16, A>>(&tile[0], 16u);
    let b = coopLoad<coop_mat16x16<f16, B>>(&input[0], 16u);
    let c = coopMultiplyAdd(a, b, coop_mat16x16<f32, C>());
    coopStore(c, &output[0], 16u);
    output[256u + lid] = f32(tile[255u - lid]);
}
";

    /// `source` as naga writes it (SPIR-V 1.5).
    fn spirv(source: &str) -> Vec<u32> {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap();
        let options = naga::back::spv::Options {
            lang_version: (1, 5),
            ..Default::default()
        };
        naga::back::spv::write_vec(&module, &info, &options, None).unwrap()
    }

    /// Operands of every instruction with opcode `op`.
    fn all(code: &[Instruction], op: u16) -> Vec<Vec<u32>> {
        code.iter()
            .filter(|i| i.op == op)
            .map(|i| i.operands.clone())
            .collect()
    }

    #[test]
    fn shared_accesses_become_non_private_and_coherent_at_workgroup_scope() {
        let before = spirv(SOURCE);
        let (_, old) = parse(&before).unwrap();
        assert!(
            old.iter()
                .any(|i| i.op == op::MEMORY_MODEL && i.operands[1] == MEMORY_MODEL_VULKAN),
            "naga no longer declares the Vulkan memory model for cooperative matrices"
        );
        let after = make_shared_accesses_coherent(&before).unwrap();
        let (header, code) = parse(&after).unwrap();
        assert_eq!(header[..3], before[..3]);

        // The scope operand: an id whose constant is 2 (Workgroup).
        let constant = |id: u32| {
            all(&code, op::CONSTANT)
                .into_iter()
                .find(|c| c[1] == id)
                .map(|c| c[2])
        };
        // Variables by storage class.
        let class_of = |var: u32| {
            all(&code, op::VARIABLE)
                .into_iter()
                .find(|v| v[1] == var)
                .map(|v| v[2])
        };
        let chains: HashMap<u32, u32> = code
            .iter()
            .filter(|i| i.op == op::ACCESS_CHAIN)
            .map(|i| (i.operands[1], i.operands[2]))
            .collect();
        let root = |mut p: u32| {
            while let Some(&base) = chains.get(&p) {
                p = base;
            }
            p
        };
        let read_only: Vec<u32> = all(&code, op::DECORATE)
            .into_iter()
            .filter(|d| d[1] == DECORATION_NON_WRITABLE)
            .map(|d| d[0])
            .collect();
        let (mut workgroup, mut writable, mut untouched) = (0, 0, 0);
        for i in &code {
            let (pointer, mask_at, bit) = match i.op {
                op::LOAD => (i.operands[2], 3, MAKE_POINTER_VISIBLE),
                op::COOPERATIVE_MATRIX_LOAD => (i.operands[2], 5, MAKE_POINTER_VISIBLE),
                op::STORE => (i.operands[0], 2, MAKE_POINTER_AVAILABLE),
                op::COOPERATIVE_MATRIX_STORE => (i.operands[0], 4, MAKE_POINTER_AVAILABLE),
                _ => continue,
            };
            let var = root(pointer);
            let shared = match class_of(var) {
                Some(STORAGE_WORKGROUP) => {
                    workgroup += 1;
                    true
                }
                Some(STORAGE_BUFFER) if !read_only.contains(&var) => {
                    writable += 1;
                    true
                }
                _ => false,
            };
            if shared {
                assert_eq!(
                    i.operands[mask_at..].len(),
                    2,
                    "op {}: {:?}",
                    i.op,
                    i.operands
                );
                assert_eq!(i.operands[mask_at], NON_PRIVATE_POINTER | bit);
                assert_eq!(constant(i.operands[mask_at + 1]), Some(SCOPE_WORKGROUP));
            } else {
                untouched += 1;
                assert_eq!(i.operands.len(), mask_at, "op {}: {:?}", i.op, i.operands);
            }
        }
        // The tile's stores and loads (scalar and cooperative), the output's stores, and
        // the input's loads left alone.
        assert!(workgroup >= 3, "{workgroup} workgroup accesses");
        assert!(writable >= 2, "{writable} writable storage accesses");
        assert!(untouched >= 2, "{untouched} other accesses");
        // Nothing else changed: the same instructions in the same order.
        let (_, old) = parse(&before).unwrap();
        let ops = |c: &[Instruction]| c.iter().map(|i| i.op).collect::<Vec<_>>();
        assert_eq!(ops(&old), ops(&code));
    }

    #[test]
    fn modules_without_the_vulkan_memory_model_pass_unchanged() {
        let words = spirv(
            "var<workgroup> t: array<f32, 64>;
@group(0) @binding(0) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    t[lid] = f32(lid);
    workgroupBarrier();
    o[lid] = t[63u - lid];
}",
        );
        assert_eq!(make_shared_accesses_coherent(&words).unwrap(), words);
    }

    #[test]
    fn malformed_input_is_refused() {
        assert!(make_shared_accesses_coherent(&[1, 2, 3]).is_err());
        // The first instruction's word count past the module's end.
        let mut words = spirv(SOURCE);
        words[5] = (words.len() as u32) << 16 | (words[5] & 0xffff);
        assert!(make_shared_accesses_coherent(&words).is_err());
    }
}
