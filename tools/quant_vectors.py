#!/usr/bin/env python3
"""Test vectors for glm-flash's weight formats, decoded by an independent implementation.

Writes, for every format, random blocks (`NAME.blocks`, raw bytes as stored in GGUF) and the
values gguf-py's `gguf.quants.dequantize` decodes them to (`NAME.f32`, little-endian float32),
under tests/fixtures/quant/. gguf-py's decoders follow ggml's `dequantize_row_*` operation for
operation; tests/formats.rs checks that glm-flash decodes every block to the same bits.

Block bytes are random; the f16 (or MXFP4's e8m0) scale fields are set to a mix of ordinary
values and extremes (zero, negative, subnormal, the smallest normal, the largest finite f16),
all chosen so that every decoded value is finite.

    pip install gguf numpy
    python3 tools/quant_vectors.py            # rewrites tests/fixtures/quant/
"""

import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant")

# Byte offsets of the f16 scale fields in each block (ggml-common.h's block_* structs).
F16_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
    T.MXFP4: [],
}

# MXFP4's shared exponent (e8m0, byte 0): the subnormal halves (0, 1), 2, the unit scale
# (128) and the largest whose levels stay finite (252); random ones between.
EXTREME_E8M0 = [0, 1, 2, 127, 128, 252]

# Blocks per format: enough to cover every scale pattern, small enough to commit.
BLOCKS_32 = 64
BLOCKS_256 = 16
FLOAT_VALUES = 512

# Extreme f16 scales: 0, -0, smallest subnormal, largest subnormal, smallest normal,
# largest finite, its negative, 1, -1.
EXTREME_F16 = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]


def scale_bits(rng, n):
    """n f16 bit patterns: every extreme once, then random ordinary scales of both signs."""
    ordinary = (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 1, n)).astype(np.float16)
    bits = ordinary.view(np.uint16).copy()
    for i, e in enumerate(EXTREME_F16):
        if i < n:
            bits[(i * 7) % n] = e
    return bits


def quant_blocks(rng, qtype):
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    n = BLOCKS_256 if block_values == 256 else BLOCKS_32
    blocks = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for field, offset in enumerate(F16_FIELDS[qtype]):
        bits = scale_bits(rng, n)
        # Different extremes in each field of a block.
        bits = np.roll(bits, 3 * field)
        blocks[:, offset : offset + 2] = bits.view(np.uint8).reshape(n, 2)
    if qtype == T.MXFP4:
        e = rng.integers(0, 253, size=n, dtype=np.uint8)
        e[: len(EXTREME_E8M0)] = EXTREME_E8M0
        blocks[:, 0] = e
    return blocks


def float_blocks(rng, qtype):
    if qtype == T.F32:
        bits = rng.integers(0, 2**32, size=FLOAT_VALUES, dtype=np.uint64).astype(np.uint32)
        bits = bits[(bits & 0x7F800000) != 0x7F800000]
        special = [0, 0x80000000, 1, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000]
        bits = np.concatenate([np.array(special, dtype=np.uint32), bits])
    else:
        bits = rng.integers(0, 2**16, size=FLOAT_VALUES, dtype=np.uint32).astype(np.uint16)
        exponent = 0x7C00 if qtype == T.F16 else 0x7F80
        bits = bits[(bits & exponent) != exponent]
        special = EXTREME_F16 if qtype == T.F16 else [0, 0x8000, 1, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80]
        bits = np.concatenate([np.array(special, dtype=np.uint16), bits])
    return bits.view(np.uint8).reshape(len(bits), -1)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240601)
    formats = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
               T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4]
    total = 0
    for qtype in formats:
        blocks = float_blocks(rng, qtype) if qtype in (T.F32, T.F16, T.BF16) else quant_blocks(rng, qtype)
        values = np.asarray(dequantize(blocks, qtype), dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(values)):
            sys.exit(f"{qtype.name}: non-finite decoded values")
        for suffix, data in (("blocks", blocks.tobytes()), ("f32", values.astype("<f4").tobytes())):
            path = os.path.join(OUT, f"{qtype.name}.{suffix}")
            with open(path, "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{qtype.name:5} {blocks.shape[0]:4} blocks, {values.size:6} values")
    print(f"{total} bytes in {OUT}")


if __name__ == "__main__":
    main()
