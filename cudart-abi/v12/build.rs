//! Links `libvgpu_cudart12.so` as `libcudart.so.12`: SONAME and version node `libcudart.so.12`,
//! and `$ORIGIN` in its run path (it loads `libvgpu.so` from its own folder).

fn main() {
    vgpu_abi_link::link_versioned("libcudart.so.12", "libcudart.so.12", "exports.txt");
    vgpu_abi_link::runpath_origin();
}
