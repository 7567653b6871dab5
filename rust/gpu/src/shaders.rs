//! WGSL sources. Each kernel family has its own file under `shaders/`; the
//! context prepends the shared prelude, picking the variants that match the
//! adapter's features (hardware f16 widening, subgroup reductions).

use crate::context::Capabilities;

/// One WGSL kernel file.
pub struct Shader {
    /// The file's name, also the pipeline cache key.
    pub name: &'static str,
    body: &'static str,
}

impl Shader {
    /// A kernel file's text, under its name.
    pub const fn new(name: &'static str, body: &'static str) -> Shader {
        Shader { name, body }
    }

    /// The complete module for an adapter with `caps`.
    pub fn source(&self, caps: Capabilities) -> String {
        let mut text = String::new();
        if caps.shader_f16 {
            text.push_str("enable f16;\n");
            text.push_str(WIDEN_F16);
        } else {
            text.push_str(WIDEN_BITS);
        }
        text.push_str(COMMON);
        text.push_str(if caps.subgroups {
            REDUCE_SUBGROUP
        } else {
            REDUCE_SHARED
        });
        text.push_str(self.body);
        text
    }
}

/// 1.5·2^23, which `shaders/math32.wgsl` adds and subtracts to round to an
/// integer; passed in the uniform block so that compilers cannot fold it.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

const COMMON: &str = include_str!("shaders/common.wgsl");
const WIDEN_BITS: &str = include_str!("shaders/widen_bits.wgsl");
const WIDEN_F16: &str = include_str!("shaders/widen_f16.wgsl");
const REDUCE_SHARED: &str = include_str!("shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("shaders/reduce_subgroup.wgsl");

/// The start-up check of the subgroup layout.
pub const PROBE: Shader = Shader::new("probe", include_str!("shaders/probe.wgsl"));
