//! GGUF container: metadata, tensor infos and tensor data as slices of a memory map.
//!
//! This module knows nothing about GLM. It checks every count, length and offset against
//! the file before using it, so a truncated or hostile file ends in an error that names
//! the key or tensor, the value and the byte offset — never a panic or a huge allocation.
//!
//! Layout (versions 2 and 3, little-endian):
//! `magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv* | tensor_info* |
//!  padding to general.alignment | tensor data`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

/// ggml tensor types: the id stored in the file, its name, and its block geometry.
/// Only the ones with a format in `crate::formats` are accepted by `weights`; the rest are
/// still known here so a file holding them can be listed and refused by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const IQ4_NL: GgmlType = GgmlType(20);
    pub const IQ4_XS: GgmlType = GgmlType(23);
    pub const BF16: GgmlType = GgmlType(30);
    pub const MXFP4: GgmlType = GgmlType(39);

    /// (name, elements per block, bytes per block) for every type ggml defines.
    fn layout(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self.layout() {
            Some((name, _, _)) => name.to_string(),
            None => format!("unknown type {}", self.0),
        }
    }

    pub fn block_elems(self) -> u64 {
        self.layout().map_or(1, |l| l.1)
    }

    pub fn block_bytes(self) -> u64 {
        self.layout().map_or(0, |l| l.2)
    }

    pub fn is_known(self) -> bool {
        self.layout().is_some()
    }

    /// Bytes of a tensor with `elems` elements, or None when `elems` is not a whole
    /// number of blocks or the size overflows.
    pub fn bytes_for(self, elems: u64) -> Option<u64> {
        let (_, be, bb) = self.layout()?;
        if !elems.is_multiple_of(be) {
            return None;
        }
        (elems / be).checked_mul(bb)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value. Arrays keep their element type so an empty array is still typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The type tags of GGUF metadata values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies in the file (used to bound counts
    /// before allocating).
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer or bool as i128 (wide enough for every GGUF integer).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            Value::Bool(v) => v as i128,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// A short human description (arrays summarised), for `info` and error messages.
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                format!(
                    "{:?}... ({} bytes)",
                    s.chars().take(60).collect::<String>(),
                    s.len()
                )
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(t, v) => format!("[{:?}; {}]", t, v.len()),
            Value::F32(x) => format!("{x}"),
            Value::F64(x) => format!("{x}"),
            Value::Bool(b) => format!("{b}"),
            other => format!("{}", other.as_int().unwrap_or_default()),
        }
    }
}

/// One tensor's description. `dims` are innermost first, as GGUF stores them.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes of a GGUF file: mapped from disk, or owned (tests, in-memory models).
pub enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

pub struct GgufFile {
    /// The file name used in error messages.
    pub name: String,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Offset of the tensor data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    bytes: Bytes,
}

impl GgufFile {
    /// Map a file and parse it. The map is read-only; tensor data is never copied.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Mapping a directory fails with "No such device", which names the wrong problem.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::Input(format!(
                "{}: is a directory, not a GGUF file",
                path.display()
            )));
        }
        // SAFETY: the map is read-only; as with every mmap-based reader, a file changed
        // underneath us by another process can change what we read, not memory safety of
        // our own structures (we copy out every header value and bound-check every slice).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        GgufFile::parse(path.display().to_string(), Bytes::Mapped(map))
    }

    /// Parse an in-memory file (`name` appears in errors).
    pub fn from_vec(name: impl Into<String>, data: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(name.into(), Bytes::Owned(data))
    }

    fn parse(name: String, bytes: Bytes) -> Result<GgufFile> {
        let mut r = Reader {
            data: &bytes,
            pos: 0,
            file: &name,
        };
        let magic = r.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(r.err_at(
                0,
                format!(
                    "not a GGUF file: magic is \"{}\", expected \"GGUF\"",
                    magic.escape_ascii()
                ),
            ));
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(r.err_at(
                4,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata key/value count")?;
        // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info
        // at least 8 + 4 + 8 + 4 + 8. Refuse counts the file cannot hold before allocating.
        r.check_count(kv_count, 13, "metadata key/value count")?;
        r.check_count(tensor_count, 32, "tensor count")?;

        let mut metadata = Vec::with_capacity(prealloc(kv_count));
        let mut key_index = HashMap::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for i in 0..kv_count {
            let at = r.pos as u64;
            let key = r.string(&format!("key of metadata entry {i}"))?;
            let vt = r.value_type(&key)?;
            let value = r.value(vt, &key, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err_at(at, format!("duplicate metadata key {key:?}")));
            }
            if key == "general.alignment" {
                alignment = match value {
                    Value::U32(a) if a > 0 && a.is_power_of_two() => a as u64,
                    ref other => {
                        return Err(r.err_at(
                            at,
                            format!(
                                "general.alignment must be a u32 power of two, found {:?} {}",
                                other.value_type(),
                                other.summary()
                            ),
                        ))
                    }
                };
            }
            metadata.push((key, value));
        }

        let mut raw = Vec::with_capacity(prealloc(tensor_count));
        let mut tensor_index = HashMap::new();
        for i in 0..tensor_count {
            let at = r.pos as u64;
            let tname = r.string(&format!("name of tensor {i}"))?;
            let n_dims = r.u32(&format!("dimension count of tensor {tname}"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(r.err_at(
                    at,
                    format!("tensor {tname} has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let dim = r.u64(&format!("dimension {d} of tensor {tname}"))?;
                if dim == 0 {
                    return Err(
                        r.err_at(at, format!("tensor {tname} has dimension {d} equal to 0"))
                    );
                }
                dims.push(dim);
            }
            let ty = GgmlType(r.u32(&format!("type of tensor {tname}"))?);
            if !ty.is_known() {
                return Err(r.err_at(
                    at,
                    format!("tensor {tname} has unknown ggml type id {}", ty.0),
                ));
            }
            let rel_offset = r.u64(&format!("offset of tensor {tname}"))?;
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    r.err_at(at, format!("tensor {tname}: dimensions {dims:?} overflow"))
                })?;
            if dims[0] % ty.block_elems() != 0 {
                return Err(r.err_at(
                    at,
                    format!(
                        "tensor {tname}: first dimension {} is not a multiple of the {} block size {}",
                        dims[0],
                        ty,
                        ty.block_elems()
                    ),
                ));
            }
            let n_bytes = ty.bytes_for(elems).ok_or_else(|| {
                r.err_at(
                    at,
                    format!("tensor {tname}: size of {elems} {ty} elements overflows"),
                )
            })?;
            if rel_offset % alignment != 0 {
                return Err(r.err_at(
                    at,
                    format!("tensor {tname}: data offset {rel_offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if tensor_index.insert(tname.clone(), raw.len()).is_some() {
                return Err(r.err_at(at, format!("duplicate tensor name {tname:?}")));
            }
            raw.push((tname, dims, ty, rel_offset, n_bytes, at));
        }

        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (tname, dims, ty, rel, n_bytes, at) in raw {
            let end = data_offset
                .checked_add(rel)
                .and_then(|o| o.checked_add(n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(r.err_at(
                        at,
                        format!(
                            "tensor {tname} needs {n_bytes} bytes at offset {} but the file has {file_len} bytes",
                            data_offset.saturating_add(rel)
                        ),
                    ))
                }
            }
            tensors.push(TensorInfo {
                name: tname,
                dims,
                ggml_type: ty,
                offset: data_offset + rel,
                n_bytes,
            });
        }
        // Overlapping tensors would alias data: refuse them.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.n_bytes > b.offset {
                return Err(Error::Gguf {
                    file: name.clone(),
                    offset: b.offset,
                    msg: format!("tensors {} and {} overlap", a.name, b.name),
                });
            }
        }

        Ok(GgufFile {
            name,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            key_index,
            tensor_index,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn model_err(&self, msg: String) -> Error {
        Error::Model {
            file: self.name.clone(),
            msg,
        }
    }

    /// Integer metadata of any integer type, converted to `T` with a range check.
    pub fn get_int<T: TryFrom<i128>>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let i = v.as_int().ok_or_else(|| {
                    self.model_err(format!(
                        "metadata {key} should be an integer, found {:?}",
                        v.value_type()
                    ))
                })?;
                T::try_from(i)
                    .map(Some)
                    .map_err(|_| self.model_err(format!("metadata {key} = {i} is out of range")))
            }
        }
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.model_err(format!(
                    "metadata {key} should be a number, found {:?}",
                    v.value_type()
                ))
            }),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                self.model_err(format!(
                    "metadata {key} should be a string, found {:?}",
                    v.value_type()
                ))
            }),
        }
    }

    /// A string array (tokens, merges) as borrowed strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(_, items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        self.model_err(format!("metadata {key} should hold strings"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.model_err(format!(
                "metadata {key} should be an array, found {:?}",
                v.value_type()
            ))),
        }
    }

    /// An integer array (token types) as i64.
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(_, items)) => items
                .iter()
                .map(|v| {
                    v.as_int().map(|i| i as i64).ok_or_else(|| {
                        self.model_err(format!("metadata {key} should hold integers"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.model_err(format!(
                "metadata {key} should be an array, found {:?}",
                v.value_type()
            ))),
        }
    }
}

/// A cursor over the file that turns every short read into an error naming what was read.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
}

/// Arrays nested deeper than this are refused (real files use depth 1).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Capacity to reserve for `count` items read from the file. Counts are already bounded by
/// the bytes that remain, but an in-memory item is larger than its smallest encoding (a
/// `Value` is 32 bytes, a u8 in the file 1), so a count that the file only claims would
/// still reserve many times the file size before the first short read. Reserve a bounded
/// amount and let the vector grow with what is actually read.
fn prealloc(count: u64) -> usize {
    count.min(4096) as usize
}

impl<'a> Reader<'a> {
    fn err_at(&self, offset: u64, msg: String) -> Error {
        Error::Gguf {
            file: self.file.to_string(),
            offset,
            msg,
        }
    }

    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err_at(
                self.pos as u64,
                format!(
                    "{what} needs {n} bytes but only {} remain (file truncated?)",
                    self.remaining()
                ),
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<()> {
        if count.saturating_mul(min_bytes_each) > self.remaining() {
            return Err(self.err_at(
                self.pos as u64,
                format!(
                    "{what} {count} cannot fit in the {} bytes that remain",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let raw = self.bytes(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|e| self.err_at(at, format!("{what} is not valid UTF-8 ({e})")))
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let at = self.pos as u64;
        let t = self.u32(&format!("type of metadata {key}"))?;
        ValueType::from_u32(t)
            .ok_or_else(|| self.err_at(at, format!("metadata {key} has unknown value type {t}")))
    }

    fn value(&mut self, vt: ValueType, key: &str, depth: u32) -> Result<Value> {
        let what = format!("value of metadata {key}");
        Ok(match vt {
            ValueType::U8 => Value::U8(self.bytes(1, &what)?[0]),
            ValueType::I8 => Value::I8(self.bytes(1, &what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(
                self.bytes(2, &what)?.try_into().unwrap(),
            )),
            ValueType::I16 => Value::I16(i16::from_le_bytes(
                self.bytes(2, &what)?.try_into().unwrap(),
            )),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(self.u32(&what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(self.u64(&what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(&what)?)),
            ValueType::Bool => {
                let at = self.pos as u64;
                match self.bytes(1, &what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(self
                            .err_at(at, format!("metadata {key}: bool byte is {b}, not 0 or 1")))
                    }
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err_at(
                        at,
                        format!("metadata {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let et = self.value_type(key)?;
                let n = self.u64(&format!("array length of metadata {key}"))?;
                self.check_count(
                    n,
                    et.min_bytes(),
                    &format!("array length of metadata {key}:"),
                )?;
                let mut items = Vec::with_capacity(prealloc(n));
                for _ in 0..n {
                    items.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(et, items)
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Writing

/// A tensor to be written: its data comes later, from the `fill` callback of `write`.
pub struct TensorSpec {
    pub name: String,
    /// Innermost first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn n_bytes(&self) -> u64 {
        self.ggml_type
            .bytes_for(self.dims.iter().product())
            .expect("tensor size is a whole number of blocks")
    }
}

/// Writes GGUF version 3. Tensor data is streamed: `fill` is called once per tensor, in
/// order, and must write exactly that tensor's bytes, so a 30 GB file needs little memory.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn kv(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_string(), value));
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType) {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
        });
    }

    pub fn write<W: Write>(
        &self,
        out: &mut W,
        mut fill: impl FnMut(&TensorSpec, &mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        // Honour a valid general.alignment (the reader aligns by it); anything else gets the
        // default, so tests can still write files whose alignment key is malformed.
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        };
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut header, k);
            header.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut header, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.n_bytes()).div_ceil(alignment) * alignment;
        }
        header.resize(
            (header.len() as u64).div_ceil(alignment) as usize * alignment as usize,
            0,
        );
        out.write_all(&header)?;
        for t in &self.tensors {
            let mut counter = CountingWriter {
                inner: &mut *out,
                count: 0,
            };
            fill(t, &mut counter)?;
            let written = counter.count;
            if written != t.n_bytes() {
                return Err(std::io::Error::other(format!(
                    "tensor {}: wrote {written} bytes, expected {}",
                    t.name,
                    t.n_bytes()
                )));
            }
            let pad = written.div_ceil(alignment) * alignment - written;
            out.write_all(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }
}

struct CountingWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write + ?Sized> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(t, items) => {
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(out, it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
