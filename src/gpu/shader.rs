//! A kernel as the Rust side declares it: its WGSL source, its bindings, its override
//! constants, and the declarations Rust and WGSL share, each written once.
//!
//! - Shared sizes (the workgroup size `WG`, a kernel's tile and array sizes) and the structs
//!   several kernels read (`Token`) are Rust constants, rendered as WGSL and prepended to
//!   the module: [`Shader::module_source`].
//! - A kernel's own uniform struct is declared on both sides: the Rust struct through
//!   `wgsl_struct!`, which also records its members' offsets, and the
//!   WGSL struct in the kernel (documented there). `tests/gpu_wgsl.rs` reflects every
//!   module with naga and checks each binding, uniform member and override against these
//!   declarations.
//!
//! Kernels that reduce across a workgroup call `reduce_sum4` / `reduce_max4`, which come from
//! one of two small libraries appended to the kernel's source: `kernels/lib/reduce_subgroup.wgsl`
//! when the device has subgroups, else `kernels/lib/reduce_workgroup.wgsl` (likewise
//! `lane_sum` / `lane_max` over small groups of invocations, `kernels/lib/lanes_*.wgsl`). It has to be a
//! choice of source, not of entry point or override constant: naga validates the whole
//! module against the device's capabilities, so subgroup builtins anywhere in a module fail
//! on a device without them.

use std::fmt::Write;
use std::marker::PhantomData;

pub use crate::formats::GpuLayout;
use crate::gpu::context::WORKGROUP_SIZE;

pub const REDUCE_SUBGROUP: &str = include_str!("kernels/lib/reduce_subgroup.wgsl");
pub const REDUCE_WORKGROUP: &str = include_str!("kernels/lib/reduce_workgroup.wgsl");
pub const LANES_SUBGROUP: &str = include_str!("kernels/lib/lanes_subgroup.wgsl");
pub const LANES_WORKGROUP: &str = include_str!("kernels/lib/lanes_workgroup.wgsl");
pub const DOT_ROWS4: &str = include_str!("kernels/lib/dot_rows4.wgsl");
/// The mat-vecs' dot units: a layout's whole units (its `unit_dot`), or single runs of them
/// (its `run_dot`), as [`GpuLayout::dot_values`] says.
pub const DOT_WHOLE_UNITS: &str = include_str!("kernels/lib/dot_whole_units.wgsl");
pub const DOT_RUNS: &str = include_str!("kernels/lib/dot_runs.wgsl");
/// `rotate2`: RoPE on two pairs.
pub const ROPE: &str = include_str!("kernels/lib/rope.wgsl");
/// `store4`, `as_stored`: values written to the latent cache as it stores them.
pub const CACHE_STORE: &str = include_str!("kernels/lib/cache_store.wgsl");
/// `group_sums`: sums over lane groups wider than a subgroup (after a lane library).
pub const GROUP_SUMS: &str = include_str!("kernels/lib/group_sums.wgsl");
/// `choose_experts`, `chosen_weight`: the MoE router's selection rule.
pub const ROUTE: &str = include_str!("kernels/lib/route.wgsl");
/// `multiply_tiles` of the batched mat-mul: f32 FMAs, or cooperative matrices.
pub const TILES_FMA: &str = include_str!("kernels/lib/tiles_fma.wgsl");
pub const TILES_COOP: &str = include_str!("kernels/lib/tiles_coop.wgsl");
/// `attend`: attention tiles on cooperative matrices over an f16 cache.
pub const ATTN_TILES: &str = include_str!("kernels/lib/attn_tiles.wgsl");
/// `prepare_queries`, `P_SCALE`, `acc_col`: what the cooperative attentions share.
pub const ATTN_COMMON: &str = include_str!("kernels/lib/attn_common.wgsl");

/// What of the device a module may use: it picks the libraries appended (a choice of
/// source, as naga validates a whole module against the device's capabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShaderCaps {
    /// Subgroup builtins (reductions, lane shuffles).
    pub subgroups: bool,
    /// How the batched mat-mul multiplies its tiles.
    pub tiles: TileMath,
}

/// How the batched mat-mul (`multiply_tiles`) multiplies its tiles: the tile library
/// appended, and for the cooperative one how many f16 parts carry each value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TileMath {
    /// f32 FMAs ([`TILES_FMA`]): every device.
    Fma,
    /// Cooperative matrices of 16x16x16 f16 inputs and f32 accumulators in subgroups of 32
    /// (tensor cores, [`TILES_COOP`]), each f32 value as two f16 parts: three products per
    /// pair of tiles, about 21 bits of each value.
    #[default]
    Split,
    /// The same cooperative matrices on values rounded to f16: one product per pair of
    /// tiles, f16's 11 bits (the precision of llama.cpp's f16 mat-muls).
    F16,
}

impl TileMath {
    pub const fn cooperative(self) -> bool {
        !matches!(self, TileMath::Fma)
    }

    /// Weight rows of a workgroup's tile (`TM`; the tokens are always 64). One f16 part
    /// leaves the workgroup memory for twice the rows, so each input converted to f16
    /// serves twice the products.
    pub const fn tile_rows(self) -> u32 {
        match self {
            TileMath::Fma | TileMath::Split => 64,
            TileMath::F16 => 128,
        }
    }

    /// Columns the batched mat-mul's tiles take per step (`BK`): a multiple of every
    /// layout's unit (16, 32 or 64 values).
    pub const fn step_columns(self) -> u32 {
        64
    }

    /// f16 parts per value in the cooperative tiles (`PARTS` in `tiles_coop.wgsl`).
    pub const fn parts(self) -> u32 {
        match self {
            TileMath::Split => 2,
            TileMath::Fma | TileMath::F16 => 1,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TileMath::Fma => "f32 FMAs",
            TileMath::Split => "cooperative matrices on f16 parts of f32",
            TileMath::F16 => "cooperative matrices on f16-rounded values",
        }
    }
}

/// A weight library of `kernels/lib/` followed by the helper library it calls (shared by
/// two layouts).
macro_rules! with_helper {
    ($library:literal, $helper:literal) => {
        concat!(
            include_str!(concat!("kernels/lib/", $library)),
            "\n",
            include_str!(concat!("kernels/lib/", $helper))
        )
    };
}

/// Whether `layout`'s library has a raw form of its units (`Raw`, `unit_raw`,
/// `raw_values`: the words a unit decodes from, which the batched mat-mul holds between
/// fetching a step's weights and storing them); the others get
/// `kernels/lib/raw_units.wgsl`, which holds the decoded values.
fn has_raw_units(layout: GpuLayout) -> bool {
    matches!(layout, GpuLayout::Q8_0 | GpuLayout::Q4K | GpuLayout::Q6K)
}

/// The WGSL library that reads weights kept in `layout` (`unit_values`, `unit_dot`; see
/// `kernels/lib/dot_rows4.wgsl`).
pub fn weights_library(layout: GpuLayout) -> &'static str {
    match layout {
        GpuLayout::F32 => include_str!("kernels/lib/weights_f32.wgsl"),
        GpuLayout::F16 => include_str!("kernels/lib/weights_f16.wgsl"),
        GpuLayout::BF16 => include_str!("kernels/lib/weights_bf16.wgsl"),
        GpuLayout::Q8_0 => include_str!("kernels/lib/weights_q8_0.wgsl"),
        GpuLayout::Q4_0 => include_str!("kernels/lib/weights_q4_0.wgsl"),
        GpuLayout::Q4_1 => include_str!("kernels/lib/weights_q4_1.wgsl"),
        GpuLayout::Q5_0 => include_str!("kernels/lib/weights_q5_0.wgsl"),
        GpuLayout::Q5_1 => include_str!("kernels/lib/weights_q5_1.wgsl"),
        GpuLayout::Q2K => include_str!("kernels/lib/weights_q2_k.wgsl"),
        GpuLayout::Q3K => include_str!("kernels/lib/weights_q3_k.wgsl"),
        GpuLayout::Q4K => with_helper!("weights_q4_k.wgsl", "scales_k4.wgsl"),
        GpuLayout::Q5K => with_helper!("weights_q5_k.wgsl", "scales_k4.wgsl"),
        GpuLayout::Q6K => include_str!("kernels/lib/weights_q6_k.wgsl"),
        GpuLayout::IQ4NL => with_helper!("weights_iq4_nl.wgsl", "levels_iq4.wgsl"),
        GpuLayout::IQ4XS => with_helper!("weights_iq4_xs.wgsl", "levels_iq4.wgsl"),
        GpuLayout::MXFP4 => include_str!("kernels/lib/weights_mxfp4.wgsl"),
    }
}

/// One WGSL kernel: its file, its interface, the libraries appended to it.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The file name without `.wgsl`; also the launcher's module name.
    pub name: &'static str,
    pub source: &'static str,
    /// Binding i of group 0 is `bindings[i]`.
    pub bindings: &'static [Slot],
    /// Every `override` of the module, as the launcher sets them.
    pub overrides: &'static [OverrideDecl],
    /// `const NAME: u32` declarations prepended to the module (sizes the launcher also uses).
    pub consts: &'static [(&'static str, u32)],
    /// Structs prepended to the module (shared by several kernels).
    pub structs: &'static [&'static WgslStruct],
    /// Appends a reduction library (`reduce_sum4`, `reduce_max4`).
    pub reduces: bool,
    /// Appends a lane library (`lane_sum`, `lane_max` over groups of `LANES` invocations,
    /// which the kernel declares with its workgroup size `AWG`).
    pub lanes: bool,
    /// What the kernel reads of weight chunks (`quants`, `scales`).
    pub weights: WeightAccess,
    /// Helpers shared by several kernels (`kernels/lib/*.wgsl`: [`ROPE`], [`ROUTE`],
    /// [`GROUP_SUMS`], [`CACHE_STORE`]), appended as they are.
    pub libraries: &'static [&'static str],
    /// Written for cooperative matrices (the f16 and cooperative-matrix enables are
    /// prepended): built only where the device has them ([`ShaderCaps::tiles`]).
    pub cooperative: bool,
}

/// How a kernel reads weights. One that does is made for one [`GpuLayout`] per pipeline:
/// the layout's library ([`weights_library`]) is appended to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightAccess {
    None,
    /// Decodes units of rows (`unit_values`): the layout's library.
    Units,
    /// Four rows times an input (`dot_rows4`, calling the kernel's `input4`): the layout's
    /// library, then `kernels/lib/dot_rows4.wgsl`.
    RowDots,
    /// Decodes units of rows into the batched mat-mul's tiles: the layout's library, then
    /// the tile library ([`TILES_COOP`] where the device has cooperative matrices, else
    /// [`TILES_FMA`]).
    Tiles,
}

impl WeightAccess {
    pub fn reads_weights(self) -> bool {
        self != WeightAccess::None
    }
}

/// What a binding is.
#[derive(Clone, Copy, Debug)]
pub enum Slot {
    /// A uniform buffer holding this struct.
    Uniform(&'static WgslStruct),
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

impl Slot {
    pub fn is_storage(&self) -> bool {
        !matches!(self, Slot::Uniform(_))
    }
}

impl Shader {
    /// Whether the module made for `caps` multiplies cooperative matrices: the kernels
    /// written for them, and the batched mat-mul where the device's tiles are cooperative.
    pub fn uses_cooperative_matrices(&self, caps: ShaderCaps) -> bool {
        self.cooperative || (caps.tiles.cooperative() && self.weights == WeightAccess::Tiles)
    }

    /// The complete module source for a device with `caps`, reading weights in `weights`
    /// (for a kernel that reads weights; ignored by others): the Rust-side declarations, the
    /// kernel, then the libraries it uses.
    pub fn module_source(&self, caps: ShaderCaps, weights: GpuLayout) -> String {
        let cooperative = self.uses_cooperative_matrices(caps);
        let mut s = String::new();
        if cooperative {
            s.push_str("enable f16;\nenable wgpu_cooperative_matrix;\n");
        }
        s.push_str("// Declared in Rust (src/gpu/shader.rs and the launcher):\n");
        let _ = writeln!(s, "const WG: u32 = {WORKGROUP_SIZE}u;");
        for (name, value) in self.consts {
            let _ = writeln!(s, "const {name}: u32 = {value}u;");
        }
        if self.weights == WeightAccess::Tiles {
            let tiles = if cooperative {
                caps.tiles
            } else {
                TileMath::Fma
            };
            let _ = writeln!(s, "const TM: u32 = {}u;", tiles.tile_rows());
            let _ = writeln!(s, "const BK: u32 = {}u;", tiles.step_columns());
        }
        if cooperative {
            let _ = writeln!(s, "const PARTS: u32 = {}u;", caps.tiles.parts());
        }
        for st in self.structs {
            s.push_str(&st.declaration());
        }
        s.push('\n');
        s.push_str(self.source);
        let mut append = |lib: &str| {
            s.push('\n');
            s.push_str(lib);
        };
        if self.reduces {
            append(if caps.subgroups {
                REDUCE_SUBGROUP
            } else {
                REDUCE_WORKGROUP
            });
        }
        if self.lanes {
            append(if caps.subgroups {
                LANES_SUBGROUP
            } else {
                LANES_WORKGROUP
            });
        }
        if self.weights.reads_weights() {
            append(weights_library(weights));
            // Its dot over the mat-vecs' dot units (a `run_dot` uses the `Run` this defines).
            append(if weights.dot_values() == weights.unit_values() {
                DOT_WHOLE_UNITS
            } else {
                DOT_RUNS
            });
            append(if self.weights == WeightAccess::Tiles {
                include_str!("kernels/lib/codes_mantissa.wgsl")
            } else {
                include_str!("kernels/lib/codes_convert.wgsl")
            });
        }
        if self.weights == WeightAccess::Tiles && !has_raw_units(weights) {
            append(include_str!("kernels/lib/raw_units.wgsl"));
        }
        match self.weights {
            WeightAccess::RowDots => append(DOT_ROWS4),
            WeightAccess::Tiles => append(if cooperative { TILES_COOP } else { TILES_FMA }),
            WeightAccess::None | WeightAccess::Units => {}
        }
        for lib in self.libraries {
            append(lib);
        }
        s
    }

    pub fn storage_buffers(&self) -> usize {
        self.bindings.iter().filter(|s| s.is_storage()).count()
    }

    pub fn uniform_buffers(&self) -> usize {
        self.bindings.len() - self.storage_buffers()
    }
}

/// The scalar types a shared struct member or an override may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    Bool,
    U32,
    F32,
}

impl Scalar {
    pub fn wgsl(self) -> &'static str {
        match self {
            Scalar::Bool => "bool",
            Scalar::U32 => "u32",
            Scalar::F32 => "f32",
        }
    }
}

/// A Rust type with a WGSL scalar counterpart.
pub trait WgslScalar {
    const SCALAR: Scalar;
}

impl WgslScalar for bool {
    const SCALAR: Scalar = Scalar::Bool;
}

impl WgslScalar for u32 {
    const SCALAR: Scalar = Scalar::U32;
}

impl WgslScalar for f32 {
    const SCALAR: Scalar = Scalar::F32;
}

/// One member of a [`WgslStruct`].
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub name: &'static str,
    pub offset: usize,
    pub ty: Scalar,
}

/// The layout of a `#[repr(C)]` Rust struct that a kernel reads as a WGSL struct with the
/// same members at the same offsets. Made by `wgsl_struct!`.
#[derive(Debug)]
pub struct WgslStruct {
    /// The struct's name in WGSL.
    pub name: &'static str,
    pub size: usize,
    pub members: &'static [Member],
}

impl WgslStruct {
    /// The WGSL declaration (for the structs prepended to a module).
    pub fn declaration(&self) -> String {
        let mut s = format!("struct {} {{\n", self.name);
        for m in self.members {
            let _ = writeln!(s, "    {}: {},", m.name, m.ty.wgsl());
        }
        s.push_str("}\n");
        s
    }
}

/// A `#[repr(C)]` struct of u32/f32 members (Pod, for uniform buffers) and its
/// [`WgslStruct`] layout as the associated const `LAYOUT`, from one declaration:
///
/// ```ignore
/// wgsl_struct! {
///     /// What the Rust side says about it.
///     pub struct Params as "Params" { rows: u32, eps: f32, _pad0: u32, _pad1: u32 }
/// }
/// ```
macro_rules! wgsl_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident as $wgsl:literal {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }

        impl $name {
            /// The member names, offsets and types, as the kernels declare them.
            pub const LAYOUT: $crate::gpu::shader::WgslStruct = $crate::gpu::shader::WgslStruct {
                name: $wgsl,
                size: ::std::mem::size_of::<$name>(),
                members: &[$($crate::gpu::shader::Member {
                    name: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                    ty: <$ty as $crate::gpu::shader::WgslScalar>::SCALAR,
                }),*],
            };
        }
    };
}
pub(crate) use wgsl_struct;

/// An `override NAME: T` of a kernel, as its launcher names and sets it.
#[derive(Debug)]
pub struct Override<T> {
    pub name: &'static str,
    ty: PhantomData<T>,
}

/// The name and type of an override (what [`Shader::overrides`] lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OverrideDecl {
    pub name: &'static str,
    pub ty: Scalar,
}

/// The value of an override for one pipeline. f32 values are kept as bits, so that a
/// pipeline key can be hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Bool(bool),
    U32(u32),
    F32(u32),
}

impl Value {
    pub fn ty(self) -> Scalar {
        match self {
            Value::Bool(_) => Scalar::Bool,
            Value::U32(_) => Scalar::U32,
            Value::F32(_) => Scalar::F32,
        }
    }

    /// As wgpu takes pipeline constants (bools as 0 / 1).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::U32(v) => f64::from(v),
            Value::F32(bits) => f64::from(f32::from_bits(bits)),
        }
    }
}

/// A Rust type an override can be set from.
pub trait OverrideValue: WgslScalar {
    fn value(self) -> Value;
}

impl OverrideValue for bool {
    fn value(self) -> Value {
        Value::Bool(self)
    }
}

impl OverrideValue for u32 {
    fn value(self) -> Value {
        Value::U32(self)
    }
}

impl OverrideValue for f32 {
    fn value(self) -> Value {
        Value::F32(self.to_bits())
    }
}

/// An override set to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Constant {
    pub name: &'static str,
    pub value: Value,
}

impl<T: OverrideValue> Override<T> {
    pub const fn new(name: &'static str) -> Self {
        Override {
            name,
            ty: PhantomData,
        }
    }

    pub const fn decl(&self) -> OverrideDecl {
        OverrideDecl {
            name: self.name,
            ty: T::SCALAR,
        }
    }

    pub fn set(&self, value: T) -> Constant {
        Constant {
            name: self.name,
            value: value.value(),
        }
    }
}
