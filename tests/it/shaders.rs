//! Every shader specialization the code launches parses and validates with naga, and respects
//! WebGPU's default limits (256 invocations, 16 KiB workgroup memory) so it runs in browsers;
//! none but the native subgroup kernels needs subgroups.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgtune::ops::shaders::Shader;

const MAX_INVOCATIONS: u32 = 256;
const MAX_WORKGROUP_BYTES: u32 = 16 * 1024;

#[test]
fn every_specialization_validates_within_webgpu_limits() {
    let all = Shader::all();
    assert!(all.len() >= 10, "expected every kernel in both stats kinds");
    for shader in all {
        let source = shader.source();
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
            panic!("{shader:?} does not parse:\n{}", e.emit_to_string(&source))
        });
        // Only the native subgroup kernels may use subgroups; every other shader runs in browsers.
        let caps = if shader.needs_subgroups() {
            Capabilities::SUBGROUP
        } else {
            Capabilities::empty()
        };
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{shader:?} does not validate: {e:?}"));
        drop(info);

        assert_eq!(module.entry_points.len(), 1, "{shader:?}: one entry point");
        let ep = &module.entry_points[0];
        assert_eq!(ep.name, "main");
        let [x, y, z] = ep.workgroup_size;
        assert_eq!((x, y, z), shader.workgroup(), "{shader:?}: workgroup size");
        assert!(
            x * y * z <= MAX_INVOCATIONS,
            "{shader:?}: {} invocations",
            x * y * z
        );

        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let workgroup_bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size)
            .sum();
        assert!(
            workgroup_bytes <= MAX_WORKGROUP_BYTES,
            "{shader:?}: {workgroup_bytes} bytes of workgroup memory"
        );
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // The check above can fail: a type error must not validate.
    let module =
        naga::front::wgsl::parse_str("@compute @workgroup_size(1) fn main() { let a: u32 = 1.5; }");
    assert!(module.is_err());
}
