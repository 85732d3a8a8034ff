//! Links every test kernel with `link.ld` (a flat arm64 Image at 0x4400_0000); the guest-role
//! kernels (`src/bin/guest_*.rs`) at IPA 0x4000_0000 instead, the first IPA of guest RAM.

/// Where guest RAM starts in every VM (docs/abi.md, "Guest images").
const GUEST_LINK_BASE: &str = "0x40000000";

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    // A bin's name is its file name with '_' turned into '-' (the [[bin]] names in Cargo.toml).
    let bins = std::fs::read_dir(format!("{dir}/src/bin")).expect("src/bin exists");
    for entry in bins.flatten() {
        let file = entry.file_name();
        let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".rs")) else {
            continue;
        };
        if stem.starts_with("guest_") {
            let bin = stem.replace('_', "-");
            println!("cargo:rustc-link-arg-bin={bin}=--defsym=__link_base={GUEST_LINK_BASE}");
        }
    }
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/bin");
}
