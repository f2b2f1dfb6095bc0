//! Links `libvgpu_cudart13.so` as `libcudart.so.13`: SONAME and version node `libcudart.so.13`.

include!("../link.rs");

fn main() {
    link_as_libcudart(13);
}
