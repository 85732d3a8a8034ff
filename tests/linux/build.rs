//! Links /init as a static, non-PIE Linux executable at 0x40_0000 (the bare-metal target's
//! default base would do for the kernel's ELF loader too; a conventional user-space base keeps
//! `readelf` output unsurprising). The entry point is `_start` (src/main.rs).

fn main() {
    println!("cargo:rustc-link-arg-bins=--image-base=0x400000");
    println!("cargo:rustc-link-arg-bins=--entry=_start");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rerun-if-changed=build.rs");
}
