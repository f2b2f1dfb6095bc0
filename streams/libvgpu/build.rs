//! Links `libvgpu.so`: SONAME `libvgpu.so`, its one export in version node `VGPU_RUNTIME_1`.

fn main() {
    vgpu_abi_link::link_versioned("libvgpu.so", "VGPU_RUNTIME_1", "exports.txt");
}
