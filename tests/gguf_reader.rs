//! The GGUF reader against broken and hostile files: every corruption is an error that names
//! what is wrong (key, tensor, value, byte offset), never a panic or a huge allocation.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use common::model_file::{micro_model, SplitMix64};
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::error::Error;
use glm_flash::gguf::{GgmlType, GgufFile, ValueType};
use glm_flash::weights::Weights;

// ---------------------------------------------------------------------------------------
// Allocation accounting: this thread's live and peak heap bytes.

struct CountingAlloc;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track_alloc(n: usize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + n;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn track_free(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            track_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        track_free(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            track_free(layout.size());
            track_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most heap bytes it held at once (this thread).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(|p| p.get()) - base)
}

// ---------------------------------------------------------------------------------------
// Building files byte by byte, for layouts GgufWriter refuses to produce.

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A GGUF string: u64 length, then the bytes (not necessarily UTF-8).
fn gstr(s: &[u8]) -> Vec<u8> {
    [le64(s.len() as u64), s.to_vec()].concat()
}

const U8: u32 = ValueType::U8 as u32;
const U32: u32 = ValueType::U32 as u32;
const U64: u32 = ValueType::U64 as u32;
const BOOL: u32 = ValueType::Bool as u32;
const STRING: u32 = ValueType::String as u32;
const ARRAY: u32 = ValueType::Array as u32;
const F32: u32 = GgmlType::F32.0;
const Q8_0: u32 = GgmlType::Q8_0.0;
const Q4_K: u32 = 12;

/// A file described field by field: any type tag, count or offset can be wrong.
struct Raw {
    version: u32,
    /// (key bytes, value type tag, encoded value)
    kvs: Vec<(Vec<u8>, u32, Vec<u8>)>,
    /// (name bytes, dims, ggml type id, offset relative to the data section)
    tensors: Vec<(Vec<u8>, Vec<u64>, u32, u64)>,
    /// The alignment the data section starts at (the reader's, from general.alignment).
    alignment: usize,
    data_len: usize,
}

/// A built file and where its parts start.
struct Built {
    bytes: Vec<u8>,
    kv_at: Vec<u64>,
    tensor_at: Vec<u64>,
    data_offset: u64,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            data_len: 0,
        }
    }

    fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Raw {
        self.kvs.push((key.as_bytes().to_vec(), ty, value));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        self.tensors
            .push((name.as_bytes().to_vec(), dims.to_vec(), ty, offset));
        self
    }

    fn data(mut self, len: usize) -> Raw {
        self.data_len = len;
        self
    }

    fn build(&self) -> Built {
        let mut b = b"GGUF".to_vec();
        b.extend(le32(self.version));
        b.extend(le64(self.tensors.len() as u64));
        b.extend(le64(self.kvs.len() as u64));
        let mut kv_at = Vec::new();
        for (key, ty, value) in &self.kvs {
            kv_at.push(b.len() as u64);
            b.extend(gstr(key));
            b.extend(le32(*ty));
            b.extend(value);
        }
        let mut tensor_at = Vec::new();
        for (name, dims, ty, offset) in &self.tensors {
            tensor_at.push(b.len() as u64);
            b.extend(gstr(name));
            b.extend(le32(dims.len() as u32));
            dims.iter().for_each(|&d| b.extend(le64(d)));
            b.extend(le32(*ty));
            b.extend(le64(*offset));
        }
        b.resize(b.len().div_ceil(self.alignment) * self.alignment, 0);
        let data_offset = b.len() as u64;
        b.resize(b.len() + self.data_len, 0);
        Built {
            bytes: b,
            kv_at,
            tensor_at,
            data_offset,
        }
    }
}

fn parse(bytes: Vec<u8>) -> glm_flash::error::Result<GgufFile> {
    GgufFile::from_vec("test.gguf", bytes)
}

/// The container error for `bytes`: its byte offset and message. Asserts that the message
/// holds every one of `needles`.
fn gguf_err(bytes: Vec<u8>, needles: &[&str]) -> u64 {
    match parse(bytes) {
        Ok(_) => panic!("parsed, expected an error naming {needles:?}"),
        Err(Error::Gguf { offset, msg, .. }) => {
            for n in needles {
                assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
            }
            offset
        }
        Err(other) => panic!("expected a GGUF error naming {needles:?}, got {other}"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", needle.escape_ascii().to_string()))
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn micro_bytes() -> Vec<u8> {
    micro_model(1).to_bytes()
}

/// A file with one tensor `t` at `offset` and 256 bytes of data.
fn one_tensor(dims: &[u64], ty: u32, offset: u64) -> Built {
    Raw::new().tensor("t", dims, ty, offset).data(256).build()
}

// ---------------------------------------------------------------------------------------
// Header

#[test]
fn the_files_built_here_are_valid() {
    let f = parse(micro_bytes()).unwrap();
    assert_eq!(f.tensors.len(), 33);
    assert!(f.get("test.nested").is_some());
    let f = parse(one_tensor(&[8], F32, 0).bytes).unwrap();
    assert_eq!(f.tensor("t").unwrap().n_bytes, 32);
}

#[test]
fn wrong_magic() {
    let mut b = micro_bytes();
    b[..4].copy_from_slice(b"GGML");
    let at = gguf_err(b, &["not a GGUF file", "\"GGML\"", "expected \"GGUF\""]);
    assert_eq!(at, 0);
    gguf_err(Vec::new(), &["magic needs 4 bytes but only 0 remain"]);
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, u32::MAX] {
        let mut b = micro_bytes();
        b[4..8].copy_from_slice(&version.to_le_bytes());
        let at = gguf_err(b, &[&format!("GGUF version {version} is not supported")]);
        assert_eq!(at, 4);
    }
    // Version 2 has the same layout as 3 (64-bit counts) and is read.
    let mut b = micro_bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(parse(b).unwrap().version, 2);
}

#[test]
fn huge_counts() {
    let mut b = micro_bytes();
    put_u64(&mut b, 8, u64::MAX);
    let at = gguf_err(b, &["tensor count 18446744073709551615 cannot fit in the"]);
    assert_eq!(at, 24);
    let mut b = micro_bytes();
    put_u64(&mut b, 16, u64::MAX);
    gguf_err(
        b,
        &["metadata key/value count 18446744073709551615 cannot fit"],
    );
}

// ---------------------------------------------------------------------------------------
// Truncation

/// Every prefix of a valid file shorter than its last tensor's end is an error pointing at
/// or before the cut; longer prefixes only lose padding and are still valid.
#[test]
fn truncation_at_every_length() {
    let full = micro_bytes();
    let parsed = parse(full.clone()).unwrap();
    let needed = parsed
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    assert!(needed < full.len(), "the last tensor should be padded");
    for len in 0..=full.len() {
        match parse(full[..len].to_vec()) {
            Ok(_) => assert!(len >= needed, "a {len}-byte prefix parsed"),
            Err(Error::Gguf { offset, msg, .. }) => {
                assert!(len < needed, "a {len}-byte prefix failed: {msg}");
                assert!(offset <= len as u64, "len {len}: offset {offset} ({msg})");
                let says_short = msg.contains("remain")
                    || msg.contains(&format!("but the file has {len} bytes"));
                assert!(says_short, "len {len}: {msg}");
            }
            Err(other) => panic!("len {len}: {other}"),
        }
    }
}

/// A cut inside each section names what was being read there. The reader first checks the
/// header's counts against the bytes that remain, so to reach a cut inside an entry the
/// header of the cut file claims only the entries up to that one.
#[test]
fn truncation_names_the_section() {
    let model = micro_model(1);
    let full = model.to_bytes();
    let kv_index = |key: &str| model.metadata.iter().position(|(k, _)| k == key).unwrap();
    let tensor_index = |name: &str| model.tensors.iter().position(|t| t.name == name).unwrap();
    let (all_kvs, all_tensors) = (model.metadata.len(), model.tensors.len());
    let cut = |len: usize, kvs: usize, tensors: usize, needles: &[&str]| {
        let mut b = full[..len].to_vec();
        if len >= 24 {
            put_u64(&mut b, 8, tensors as u64);
            put_u64(&mut b, 16, kvs as u64);
        }
        gguf_err(b, needles)
    };

    let at = cut(12, 0, 0, &["tensor count needs 8 bytes but only 4 remain"]);
    assert_eq!(at, 8);
    let at = cut(
        20,
        0,
        0,
        &["key/value count needs 8 bytes but only 4 remain"],
    );
    assert_eq!(at, 16);

    let name_kv = kv_index("general.name") + 1;
    let key = find(&full, b"general.name");
    let at = cut(
        key + 3,
        name_kv,
        0,
        &["key of metadata entry 1 needs 12 bytes but only 3 remain"],
    );
    assert_eq!(at, key as u64);
    cut(
        key + 14,
        name_kv,
        0,
        &["type of metadata general.name needs 4 bytes"],
    );

    let value = find(&full, b"micro");
    let at = cut(
        value + 2,
        name_kv,
        0,
        &["value of metadata general.name needs 5 bytes but only 2 remain"],
    );
    assert_eq!(at, value as u64);

    // Inside the token array: its length against what remains, then one element.
    let tokens_kv = kv_index("tokenizer.ggml.tokens") + 1;
    let tokens = find(&full, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len();
    cut(
        tokens + 4 + 4 + 8,
        tokens_kv,
        0,
        &["array length of metadata tokenizer.ggml.tokens: 16 cannot fit in the 0 bytes"],
    );
    cut(
        find(&full, b"t15") + 1,
        tokens_kv,
        0,
        &["value of metadata tokenizer.ggml.tokens needs 3 bytes but only 1 remain"],
    );
    // After the outer array's type, element type and length, the first inner array (type,
    // length, 2 bytes) and the second's type and length: its 1 byte is missing.
    let nested = find(&full, b"test.nested") + "test.nested".len();
    cut(
        nested + 4 + 4 + 8 + 14 + 12,
        kv_index("test.nested") + 1,
        0,
        &["array length of metadata test.nested: 1 cannot fit in the 0 bytes that remain"],
    );

    let name = "blk.1.ffn_up_exps.weight";
    let info = find(&full, name.as_bytes()) + name.len();
    let n = tensor_index(name) + 1;
    let cut_info = |len, what: &str| cut(len, all_kvs, n, &[&format!("{what} of tensor {name}")]);
    cut_info(info + 2, "dimension count");
    cut_info(info + 4 + 8 + 3, "dimension 1");
    cut_info(info + 4 + 24 + 1, "type");
    cut_info(info + 4 + 24 + 4 + 5, "offset");

    let parsed = parse(full.clone()).unwrap();
    let last = parsed.tensors.last().unwrap();
    let len = (last.offset + 4) as usize;
    let at = cut(
        len,
        all_kvs,
        all_tensors,
        &[&format!(
            "tensor {} needs {} bytes at offset {} but the file has {len} bytes",
            last.name, last.n_bytes, last.offset
        )],
    );
    assert_eq!(at, find(&full, last.name.as_bytes()) as u64 - 8);
}

// ---------------------------------------------------------------------------------------
// Lengths and counts the file cannot hold

#[test]
fn huge_string_lengths() {
    let mut b = Raw::new().build().bytes;
    b.truncate(24);
    put_u64(&mut b, 16, 1);
    b.extend(le64(u64::MAX));
    b.extend([0; 16]);
    gguf_err(
        b,
        &["key of metadata entry 0 needs 18446744073709551615 bytes but only 16 remain"],
    );

    let b = Raw::new()
        .kv("general.name", STRING, le64(u64::MAX))
        .build();
    gguf_err(
        b.bytes,
        &["value of metadata general.name needs 18446744073709551615 bytes"],
    );

    let mut b = Raw::new().tensor("t", &[8], F32, 0).data(32).build();
    put_u64(&mut b.bytes, b.tensor_at[0] as usize, 1 << 62);
    gguf_err(
        b.bytes,
        &["name of tensor 0 needs 4611686018427387904 bytes"],
    );
}

/// A 100-byte file claiming 2^40 array elements fails at once, without reserving memory
/// for them (the reader bounds counts by the bytes that remain).
#[test]
fn huge_array_length_fails_fast_without_allocating() {
    let array = |elem: u32, n: u64| [le32(elem), le64(n)].concat();
    let cases = vec![
        Raw::new()
            .kv("big", ARRAY, array(U8, 1 << 40))
            .build()
            .bytes,
        Raw::new()
            .kv("big", ARRAY, array(STRING, 1 << 40))
            .build()
            .bytes,
        // A plausible outer array of arrays, each inner one claiming more than remains.
        Raw::new()
            .kv("big", ARRAY, [array(ARRAY, 4), array(U8, 1 << 40)].concat())
            .build()
            .bytes,
    ];
    for mut bytes in cases {
        bytes.resize(bytes.len().max(100), 0);
        let size = bytes.len();
        let start = Instant::now();
        let (result, peak) = peak_heap(|| parse(bytes).map(|_| ()));
        let msg = match result {
            Err(Error::Gguf { msg, .. }) => msg,
            other => panic!("expected a GGUF error, got {other:?}"),
        };
        assert!(msg.contains("metadata big"), "{msg}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            peak < 64 * 1024,
            "{peak} bytes on the heap for a {size}-byte file: {msg}"
        );
    }
}

/// A count the file could hold, whose elements are not there, reserves little: a 4 MB file
/// claiming a quarter million strings fails at the first one without first reserving 8 MB
/// of values.
#[test]
fn claimed_counts_are_not_reserved_up_front() {
    let size = 4 << 20;
    let n = size as u64 / 16;
    let first_len = u64::MAX;
    let value = [le32(STRING), le64(n), le64(first_len)].concat();
    let mut b = Raw::new().kv("strings", ARRAY, value).build().bytes;
    b.resize(size, 0);
    let (result, peak) = peak_heap(|| parse(b).map(|_| ()));
    match result {
        Err(Error::Gguf { msg, .. }) => assert!(
            msg.contains("value of metadata strings needs 18446744073709551615 bytes"),
            "{msg}"
        ),
        other => panic!("expected a GGUF error, got {other:?}"),
    }
    assert!(peak < 1 << 20, "{peak} bytes on the heap");
}

#[test]
fn nested_arrays_too_deep() {
    let mut value = [le32(U8), le64(0)].concat();
    for _ in 0..9 {
        value = [le32(ARRAY), le64(1), value].concat();
    }
    // The outermost type tag is the entry's own.
    let b = Raw::new().kv("deep", ARRAY, value).build();
    gguf_err(b.bytes, &["metadata deep: arrays nested deeper than 8"]);
}

// ---------------------------------------------------------------------------------------
// Tensor infos

#[test]
fn tensor_offset_past_the_end() {
    let b = one_tensor(&[8], F32, 1 << 20);
    let at = gguf_err(
        b.bytes,
        &[&format!(
            "tensor t needs 32 bytes at offset {} but the file has",
            b.data_offset + (1 << 20)
        )],
    );
    assert_eq!(at, b.tensor_at[0]);
    // An offset so large that offset + size overflows.
    let b = one_tensor(&[8], F32, u64::MAX - 31); // aligned: a multiple of 32
    gguf_err(
        b.bytes,
        &["tensor t needs 32 bytes at offset 18446744073709551615"],
    );
}

#[test]
fn overlapping_tensors() {
    let b = Raw::new()
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[8], F32, 32)
        .data(128)
        .build();
    let at = gguf_err(b.bytes, &["tensors a and b overlap"]);
    assert_eq!(at, b.data_offset + 32);
    let b = Raw::new()
        .tensor("a", &[8], F32, 64)
        .tensor("b", &[8], F32, 64)
        .data(128)
        .build();
    gguf_err(b.bytes, &["overlap"]);
}

#[test]
fn misaligned_tensor_offsets() {
    let b = one_tensor(&[8], F32, 4);
    let at = gguf_err(
        b.bytes,
        &["tensor t: data offset 4 is not a multiple of the alignment 32"],
    );
    assert_eq!(at, b.tensor_at[0]);

    let mut raw = Raw::new()
        .kv("general.alignment", U32, le32(64))
        .tensor("t", &[8], F32, 32)
        .data(256);
    raw.alignment = 64;
    gguf_err(
        raw.build().bytes,
        &["data offset 32 is not a multiple of the alignment 64"],
    );
    raw.tensors[0].3 = 64;
    let built = raw.build();
    let f = parse(built.bytes).unwrap();
    assert_eq!((f.alignment, f.data_offset), (64, built.data_offset));
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.tensor("t").unwrap().offset, f.data_offset + 64);
}

#[test]
fn bad_alignment_key() {
    for (ty, value, shown) in [
        (U32, le32(0), "U32 0"),
        (U32, le32(3), "U32 3"),
        (U32, le32(48), "U32 48"),
        (U64, le64(32), "U64 32"),
        (STRING, gstr(b"32"), "String \"32\""),
    ] {
        let b = Raw::new()
            .kv("general.name", STRING, gstr(b"x"))
            .kv("general.alignment", ty, value)
            .build();
        let at = gguf_err(
            b.bytes,
            &[&format!(
                "general.alignment must be a u32 power of two, found {shown}"
            )],
        );
        assert_eq!(at, b.kv_at[1], "the offset is the key's");
    }
}

#[test]
fn dims_that_do_not_fill_blocks() {
    let b = one_tensor(&[33, 2], Q8_0, 0);
    gguf_err(
        b.bytes,
        &["tensor t: first dimension 33 is not a multiple of the Q8_0 block size 32"],
    );
    let b = one_tensor(&[255], Q4_K, 0);
    gguf_err(b.bytes, &["first dimension 255", "Q4_K block size 256"]);
    // A whole number of blocks is fine.
    let f = parse(one_tensor(&[64, 2], Q8_0, 0).bytes).unwrap();
    assert_eq!(f.tensor("t").unwrap().n_bytes, 4 * 34);
}

#[test]
fn dimension_counts_and_zero_dims() {
    gguf_err(
        one_tensor(&[2, 2, 2, 2, 2], F32, 0).bytes,
        &["tensor t has 5 dimensions; 1 to 4 are allowed"],
    );
    gguf_err(
        one_tensor(&[], F32, 0).bytes,
        &["tensor t has 0 dimensions"],
    );
    gguf_err(
        one_tensor(&[4, 0], F32, 0).bytes,
        &["tensor t has dimension 1 equal to 0"],
    );
    gguf_err(
        one_tensor(&[1 << 32, 1 << 32, 1 << 32], F32, 0).bytes,
        &["tensor t: dimensions [4294967296, 4294967296, 4294967296] overflow"],
    );
    gguf_err(
        one_tensor(&[1 << 62], F32, 0).bytes,
        &["tensor t: size of 4611686018427387904 F32 elements overflows"],
    );
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let b = Raw::new()
        .kv("general.name", STRING, gstr(b"a"))
        .kv("general.name", STRING, gstr(b"b"))
        .build();
    let at = gguf_err(b.bytes, &["duplicate metadata key \"general.name\""]);
    assert_eq!(at, b.kv_at[1]);

    let b = Raw::new()
        .tensor("t", &[8], F32, 0)
        .tensor("t", &[8], F32, 32)
        .data(64)
        .build();
    let at = gguf_err(b.bytes, &["duplicate tensor name \"t\""]);
    assert_eq!(at, b.tensor_at[1]);
}

#[test]
fn non_utf8_strings() {
    let mut raw = Raw::new();
    raw.kvs.push((b"bad\xff".to_vec(), U8, vec![1]));
    let b = raw.build();
    let at = gguf_err(b.bytes, &["key of metadata entry 0 is not valid UTF-8"]);
    assert_eq!(at, b.kv_at[0]);

    let b = Raw::new()
        .kv("general.name", STRING, gstr(b"\xc3\x28"))
        .build();
    gguf_err(
        b.bytes,
        &["value of metadata general.name is not valid UTF-8"],
    );

    let mut raw = Raw::new().data(32);
    raw.tensors.push((b"\xfe".to_vec(), vec![8], F32, 0));
    gguf_err(raw.build().bytes, &["name of tensor 0 is not valid UTF-8"]);
}

#[test]
fn unknown_value_types() {
    let b = Raw::new().kv("x", 13, le32(0)).build();
    let at = gguf_err(b.bytes, &["metadata x has unknown value type 13"]);
    assert_eq!(at, b.kv_at[0] + 8 + 1);
    let b = Raw::new()
        .kv("x", ARRAY, [le32(99), le64(0)].concat())
        .build();
    gguf_err(b.bytes, &["metadata x has unknown value type 99"]);
}

#[test]
fn unknown_ggml_types() {
    // 4 and 5 are Q4_2 and Q4_3, removed from ggml; 99 never existed.
    for id in [4, 5, 99, u32::MAX] {
        gguf_err(
            one_tensor(&[32], id, 0).bytes,
            &[&format!("tensor t has unknown ggml type id {id}")],
        );
    }
}

#[test]
fn bool_byte_other_than_0_or_1() {
    let b = Raw::new().kv("flag", BOOL, vec![2]).build();
    let at = gguf_err(b.bytes, &["metadata flag: bool byte is 2, not 0 or 1"]);
    assert_eq!(at, b.kv_at[0] + 8 + 4 + 4);
    let b = Raw::new()
        .kv("flags", ARRAY, [le32(BOOL), le64(2), vec![1, 7]].concat())
        .build();
    gguf_err(b.bytes, &["metadata flags: bool byte is 7"]);
}

// ---------------------------------------------------------------------------------------
// Random corruption

/// One random change to a valid file: a bit flip, random bytes, a cut, or a u32/u64 that
/// is often a boundary value. Offsets favour the header, where the structure is.
fn corrupt(rng: &mut SplitMix64, bytes: &mut Vec<u8>, header_len: usize) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len() as u64;
    let limit = if rng.below(4) == 0 {
        len
    } else {
        len.min(header_len as u64)
    };
    let at = rng.below(limit) as usize;
    let interesting = [
        0,
        1,
        2,
        3,
        8,
        31,
        32,
        33,
        255,
        len,
        u32::MAX as u64,
        1 << 40,
        u64::MAX,
    ];
    let word = if rng.below(2) == 0 {
        interesting[rng.below(interesting.len() as u64) as usize]
    } else {
        rng.next_u64()
    };
    match rng.below(5) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => {
            for i in at..(at + 1 + rng.below(8) as usize).min(bytes.len()) {
                bytes[i] = rng.next_u64() as u8;
            }
        }
        2 => bytes.truncate(rng.below(len) as usize),
        3 => {
            let w = word.to_le_bytes();
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&w[..end - at]);
        }
        _ => {
            let w = word.to_le_bytes();
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&w[..end - at]);
        }
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    gguf_errors: usize,
    config_errors: usize,
    weights_errors: usize,
    loaded: usize,
}

/// Parse, then Config and Weights when the stage before succeeded, and a forward pass of
/// two tokens through what loads; counts the stage that failed. Any panic inside is the
/// caller's to catch.
fn load(bytes: Vec<u8>, out: &mut Outcomes) {
    let Ok(f) = parse(bytes) else {
        out.gguf_errors += 1;
        return;
    };
    let Ok(cfg) = Config::from_gguf(&f) else {
        out.config_errors += 1;
        return;
    };
    let Ok(weights) = Weights::from_gguf(&f, &cfg) else {
        out.weights_errors += 1;
        return;
    };
    out.loaded += 1;
    let mut cpu = CpuBackend::new(&cfg, &weights, 8, 1).unwrap();
    let _ = cpu.feed_logits(&[0, 1], 0, Rows::All);
}

/// Thousands of random corruptions of a valid micro model: every one parses or fails with
/// an error, Config, Weights and the CPU forward pass never panic on what parses, and no
/// parse holds much more heap than the file's size.
#[test]
fn random_corruptions_never_panic() {
    const ITERATIONS: u64 = 20_000;
    const SEED: u64 = 0x6767_7566_2d66_757a;
    let base = micro_bytes();
    let header_len = parse(base.clone()).unwrap().data_offset as usize;
    let mut out = Outcomes::default();
    let mut worst_heap = (0usize, 0u64);
    for i in 0..ITERATIONS {
        let mut rng = SplitMix64(SEED ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut bytes = base.clone();
        for _ in 0..1 + rng.below(3) {
            corrupt(&mut rng, &mut bytes, header_len);
        }
        let size = bytes.len();
        let (result, peak) =
            peak_heap(|| catch_unwind(AssertUnwindSafe(|| parse(bytes.clone()).map(|_| ()))));
        let parsed =
            result.unwrap_or_else(|_| panic!("parse panicked: seed {SEED:#x} iteration {i}"));
        // The parse owns a copy of the file; its own structures stay within a small multiple.
        let budget = 48 * size + (256 << 10);
        assert!(
            peak <= budget,
            "iteration {i}: {peak} heap bytes for a {size}-byte file ({parsed:?})"
        );
        if peak > worst_heap.0 {
            worst_heap = (peak, i);
        }
        catch_unwind(AssertUnwindSafe(|| load(bytes, &mut out))).unwrap_or_else(|_| {
            panic!("Config, Weights or forward panicked: seed {SEED:#x} iteration {i}")
        });
    }
    println!(
        "{out:?}; largest heap {} bytes (iteration {})",
        worst_heap.0, worst_heap.1
    );
    assert_eq!(
        out.gguf_errors + out.config_errors + out.weights_errors + out.loaded,
        ITERATIONS as usize
    );
    // The corruptions reach every stage: some files fail each check, some still load.
    assert!(out.gguf_errors > 0 && out.config_errors > 0 && out.weights_errors > 0);
    assert!(out.loaded > 0);
}

/// Writes the fuzzer's seed corpus (see fuzz/README.md): two micro models (with and
/// without general.alignment) and one file with only their metadata.
#[test]
#[ignore = "writes fuzz/corpus/gguf_reader; run by hand: cargo test --test gguf_reader write_fuzz_seeds -- --ignored"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("micro-model.gguf"), micro_bytes()).unwrap();
    let mut default_alignment = micro_model(3);
    default_alignment.remove("general.alignment");
    std::fs::write(dir.join("micro-model-3.gguf"), default_alignment.to_bytes()).unwrap();
    let mut meta_only = micro_model(2);
    meta_only.tensors.clear();
    std::fs::write(dir.join("metadata-only.gguf"), meta_only.to_bytes()).unwrap();
}
