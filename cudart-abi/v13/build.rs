//! Links `libvgpu_cudart13.so` as `libcudart.so.13`: SONAME and version node `libcudart.so.13`,
//! and `$ORIGIN` in its run path (it loads `libvgpu.so` from its own folder).

fn main() {
    vgpu_abi_link::link_versioned("libcudart.so.13", "libcudart.so.13", "exports.txt");
    vgpu_abi_link::runpath_origin();
}
