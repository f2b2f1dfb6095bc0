//! Links `libvgpu_cudart12.so` as `libcudart.so.12`: SONAME and version node `libcudart.so.12`.

include!("../link.rs");

fn main() {
    link_as_libcudart(12);
}
