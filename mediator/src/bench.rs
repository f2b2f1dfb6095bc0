//! `vgpu bench`: placeholder replaced below.
pub fn run(_quick: bool, _json: bool) -> Result<(), String> {
    Err("bench: being written".into())
}
