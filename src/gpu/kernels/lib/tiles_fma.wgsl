// Tile library of matmul.wgsl for every device: f32 FMAs. Each invocation accumulates a
// 4-row x 4-token block of the tile in registers, reading one vec4 of rows and one of
// tokens per column.

/// matmul.wgsl's loaders: one column of neighbouring rows (tokens) per invocation group, so
/// the stores below fall in distinct banks.
const W_ALONG_K: bool = false;
const X_ALONG_K: bool = false;
/// The weights enter the tiles as they are, and f32 holds any value.
const W_SCALE: f32 = 1.0;
fn tile_note_bound(bound: f32) {}

/// [k][row quad]: the weights of step column k for rows 4q..4q+3.
var<workgroup> w_tile: array<vec4<f32>, BK * TM / 4u>;
/// [k][token quad]: the inputs of step column k for tokens 4q..4q+3.
var<workgroup> x_tile: array<vec4<f32>, BK * TN / 4u>;

/// Columns k..k+7 of tile row r (a, then b).
fn tile_put_w(k: u32, r: u32, a: vec4<f32>, b: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        w_tile[(k + i) * (TM / 4u) + r / 4u][r % 4u] = a[i];
        w_tile[(k + 4u + i) * (TM / 4u) + r / 4u][r % 4u] = b[i];
    }
}

/// Columns k..k+3 of tile token j.
fn tile_put_x(k: u32, j: u32, v: vec4<f32>) {
    x_tile[k * (TN / 4u) + j / 4u][j % 4u] = v.x;
    x_tile[(k + 1u) * (TN / 4u) + j / 4u][j % 4u] = v.y;
    x_tile[(k + 2u) * (TN / 4u) + j / 4u][j % 4u] = v.z;
    x_tile[(k + 3u) * (TN / 4u) + j / 4u][j % 4u] = v.w;
}

fn multiply_tiles(lid: u32, steps: u32) {
    // Rows 4rq..4rq+3 and tokens 4tq..4tq+3 of the tile. Each group of 32 invocations
    // takes 8 row quads x 4 token quads, so its loads of a column touch 8 and 4 distinct
    // vec4 of the tiles (a broadcast each, where a subgroup is those 32).
    let rq = lid % 8u + 8u * ((lid / 32u) % (TM / 32u));
    let tq = (lid % 32u) / 8u + 4u * (lid / TM);
    var acc: array<vec4<f32>, 4>;
    for (var s = 0u; s < steps; s++) {
        load_step(lid, s);
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let w = w_tile[k * (TM / 4u) + rq];
            let xt = x_tile[k * (TN / 4u) + tq];
            acc[0] += w * xt.x;
            acc[1] += w * xt.y;
            acc[2] += w * xt.z;
            acc[3] += w * xt.w;
        }
        workgroupBarrier();
    }
    // Constant trip counts (no early exit): the accumulators stay in registers.
    for (var m = 0u; m < 4u; m++) {
        let a = acc[m];
        write_pair(4u * rq, 4u * tq + m, a.x, a.y);
        write_pair(4u * rq + 2u, 4u * tq + m, a.z, a.w);
    }
}
