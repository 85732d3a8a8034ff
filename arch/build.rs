//! Links the EL2 image with its own linker script (arch/linker.ld): the image must sit at
//! 0x4020_0000 with page-aligned sections so that the stage-1 tables can give each section its own
//! permissions (W^X).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=src/asm/boot.S");
    println!("cargo:rerun-if-changed=src/asm/vectors.S");
}
