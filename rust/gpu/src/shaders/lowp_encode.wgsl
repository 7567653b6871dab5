// Float-format rounding: codes (uint8 four per word, uint16 two per word,
// 4-bit codes packed two per byte along rows) or their float32 values, for
// float32/float16/bfloat16/float64 input, one format or a format per element
// (round_mixed). Each invocation produces one output word.

struct Params {
    count: u32,          // elements (or packed bytes) in this chunk
    in_kind: u32,        // 0 float32, 1 float16, 2 bfloat16, 3 float64
    out_kind: u32,       // 0 u8 codes, 1 u16 codes, 2 float32 values, 3 packed nibbles
    mixed: u32,          // 1: labels pick the codec of each element
    base_lo: u32,        // global index of the chunk's first element (stochastic draws)
    base_hi: u32,
    key_lo: u32,         // stochastic key
    key_hi: u32,
    row_len: u32,        // packed: elements per row
    packed_len: u32,     // packed: bytes per row
    first_byte_col: u32, // packed: byte column of the chunk's first byte
    elements: u32,       // packed: elements in this chunk
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> xin: array<u32>;
@group(0) @binding(2) var<storage, read> codecs: array<Codec>;
@group(0) @binding(3) var<storage, read> labels: array<u32>; // int64 labels: low words
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

// The code of local element `i`.
fn code_of(i: u32) -> u32 {
    var c = codecs[0];
    if params.mixed != 0u {
        c = codecs[labels[2u * i]];
    }
    var rand = 0u;
    if c.rounding == ROUND_STOCHASTIC {
        rand = random_u32(vec2<u32>(params.key_lo, params.key_hi), add64(vec2<u32>(params.base_lo, params.base_hi), vec2<u32>(i, 0u)));
    }
    switch params.in_kind {
        case 0u: {
            return encode_f32_bits(c, xin[i], rand);
        }
        case 1u: {
            let h = (xin[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu;
            return encode_f32_bits(c, f16_bits_to_f32(h), rand);
        }
        case 2u: {
            let h = (xin[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu;
            return encode_f32_bits(c, h << 16u, rand);
        }
        default: {
            return encode_f64_bits(c, xin[2u * i], xin[2u * i + 1u], rand);
        }
    }
}

// The float32 bits of element i's rounded value (its code through the table).
fn value_of(i: u32) -> u32 {
    var offset = codecs[0].table_offset;
    if params.mixed != 0u {
        offset = codecs[labels[2u * i]].table_offset;
    }
    return table[offset + code_of(i)];
}

// Local element index of the low nibble of local packed byte b.
fn packed_element(b: u32) -> u32 {
    let total = params.first_byte_col + b;
    let row = total / params.packed_len;
    let col = total % params.packed_len;
    return row * params.row_len + 2u * col - 2u * params.first_byte_col;
}

@compute @workgroup_size(256)
fn encode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = flat_group(wid, nwg) * WG + lid;
    switch params.out_kind {
        case 0u: {
            // four u8 codes per word
            let i0 = 4u * w;
            if i0 >= params.count {
                return;
            }
            var word = 0u;
            for (var j = 0u; j < 4u; j++) {
                if i0 + j < params.count {
                    word |= (code_of(i0 + j) & 0xffu) << (8u * j);
                }
            }
            out[w] = word;
        }
        case 1u: {
            // two u16 codes per word
            let i0 = 2u * w;
            if i0 >= params.count {
                return;
            }
            var word = code_of(i0) & 0xffffu;
            if i0 + 1u < params.count {
                word |= (code_of(i0 + 1u) & 0xffffu) << 16u;
            }
            out[w] = word;
        }
        case 2u: {
            if w >= params.count {
                return;
            }
            out[w] = value_of(w);
        }
        default: {
            // four packed bytes per word, two 4-bit codes per byte
            let b0 = 4u * w;
            if b0 >= params.count {
                return;
            }
            var word = 0u;
            for (var t = 0u; t < 4u; t++) {
                let b = b0 + t;
                if b < params.count {
                    let e = packed_element(b);
                    let col = (params.first_byte_col + b) % params.packed_len;
                    var byte = code_of(e) & 0xfu;
                    if 2u * col + 1u < params.row_len {
                        byte |= (code_of(e + 1u) & 0xfu) << 4u;
                    }
                    word |= byte << (8u * t);
                }
            }
            out[w] = word;
        }
    }
}
