//! Hostile and broken blobs: every one is refused with an exact error, none panics or hangs.
//! (The reader only takes `&[u8]`, so the input provably stays unchanged; the tests check the
//! error, and that anything accepted is fully usable.)

mod fdt_common;

use fdt_common::*;
use verso::fdt::{amend, Amendments, Fdt, FdtError, MAX_DEPTH, MAX_TOTAL_SIZE};

/// Runs every query and an amendment over an accepted blob; the amended blob must parse again.
fn exercise(fdt: &Fdt) {
    let _ = fdt.memory().count();
    let _ = fdt.reserved_memory().count();
    let _ = fdt.cpus().count();
    let _ = (fdt.bootargs(), fdt.initrd(), fdt.stdout_uart());
    let _ = (
        fdt.compatible_reg("arm,smmu-v3"),
        fdt.has_compatible("arm,pl011"),
    );
    let _ = fdt.property("/pcie@10000000", "iommu-map");
    let _ = walk(fdt);
    let regions = [("hyp", 0x4020_0000, 0x200_0000)];
    let edits = Amendments {
        reserve_no_map: &regions,
        remove_compatible: &["arm,smmu-v3"],
        remove_properties: &["iommu-map"],
        bootargs: Some("console=ttyAMA0"),
    };
    let mut out = vec![0u8; 32 * 1024];
    if let Ok(n) = amend(fdt, &mut out, &edits) {
        Fdt::new(&out[..n]).expect("amending an accepted tree yields a valid tree");
    }
    let mut out = vec![0u8; 32 * 1024];
    let n =
        amend(fdt, &mut out, &Amendments::default()).expect("an accepted tree always re-encodes");
    let again = Fdt::new(&out[..n]).expect("re-encoded tree parses");
    assert_eq!(walk(&again), walk(fdt));
}

#[test]
fn truncation_at_every_length_is_an_error() {
    for fixture in [VIRT, VIRT_BOOTARGS] {
        let strings_end =
            (header_word(fixture, OFF_STRINGS) + header_word(fixture, SIZE_STRINGS)) as usize;
        for len in 0..fixture.len() {
            // As cut: the header's totalsize no longer fits.
            let err = Fdt::new(&fixture[..len]).unwrap_err();
            assert!(matches!(err, FdtError::Truncated), "len {len}: {err:?}");
            // With totalsize patched to the cut, the blocks no longer fit.
            if len >= 40 {
                let mut cut = fixture[..len].to_vec();
                set_header_word(&mut cut, TOTALSIZE, len as u32);
                let res = Fdt::new(&cut);
                if len < strings_end {
                    assert_eq!(res.unwrap_err(), FdtError::BadLayout, "len {len}");
                } else {
                    exercise(&res.unwrap());
                }
            }
        }
    }
}

#[test]
fn random_byte_flips_never_panic_and_accepted_blobs_stay_usable() {
    let mut rng = XorShift(0x5eed_f00d_cafe_d00d);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..2000 {
        let mut blob = if i % 2 == 0 {
            VIRT.to_vec()
        } else {
            VIRT_BOOTARGS.to_vec()
        };
        for _ in 0..1 + rng.below(4) {
            // A quarter of the flips hit the header, where the offsets and sizes live.
            let at = if rng.below(4) == 0 {
                rng.below(40)
            } else {
                rng.below(blob.len())
            };
            blob[at] ^= 1 << rng.below(8);
        }
        match Fdt::new(&blob) {
            Ok(fdt) => {
                exercise(&fdt);
                accepted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    // Both paths were really taken (flips in property values are harmless; in tokens are not).
    assert!(
        accepted > 100 && rejected > 100,
        "accepted {accepted}, rejected {rejected}"
    );
}

#[test]
fn random_header_words_never_panic() {
    let mut rng = XorShift(42);
    for _ in 0..2000 {
        let mut blob = VIRT.to_vec();
        let word = 1 + rng.below(9);
        let value = match rng.below(3) {
            0 => rng.next() as u32,
            1 => (rng.next() as u32) % (VIRT.len() as u32 + 64),
            _ => u32::MAX - rng.below(64) as u32,
        };
        set_header_word(&mut blob, word, value);
        if let Ok(fdt) = Fdt::new(&blob) {
            exercise(&fdt);
        }
    }
}

#[test]
fn bad_magic_is_bad_magic() {
    let mut blob = VIRT.to_vec();
    blob[3] ^= 1;
    assert_eq!(Fdt::new(&blob).unwrap_err(), FdtError::BadMagic);
    // SAFETY: `blob` holds at least the 40-byte header.
    assert_eq!(
        unsafe { Fdt::from_ptr(blob.as_ptr()) }.unwrap_err(),
        FdtError::BadMagic
    );
}

#[test]
fn old_or_incompatible_versions_are_refused() {
    for (word, value) in [(VERSION, 16), (VERSION, 0), (LAST_COMP, 18)] {
        let mut blob = VIRT.to_vec();
        set_header_word(&mut blob, word, value);
        assert_eq!(
            Fdt::new(&blob).unwrap_err(),
            FdtError::BadVersion,
            "word {word} = {value}"
        );
    }
    let mut blob = VIRT.to_vec();
    set_header_word(&mut blob, VERSION, 18); // newer but compatible with 17
    assert!(Fdt::new(&blob).is_ok());
}

#[test]
fn offsets_and_sizes_out_of_bounds_are_bad_layout() {
    let len = VIRT.len() as u32;
    let cases = [
        (TOTALSIZE, 39),
        (OFF_STRUCT, len),
        (OFF_STRUCT, 0x42), // misaligned
        (OFF_STRUCT, 0),    // inside the header
        (SIZE_STRUCT, len),
        (SIZE_STRUCT, u32::MAX),
        (OFF_STRINGS, u32::MAX),
        (SIZE_STRINGS, len),
        (OFF_RSVMAP, 0x34), // misaligned
        (OFF_RSVMAP, 0x20), // inside the header
        (OFF_RSVMAP, len),
        (OFF_RSVMAP, len - 8), // entry runs past the end
    ];
    for (word, value) in cases {
        let mut blob = VIRT.to_vec();
        set_header_word(&mut blob, word, value);
        assert_eq!(
            Fdt::new(&blob).unwrap_err(),
            FdtError::BadLayout,
            "word {word} = {value:#x}"
        );
    }
    let mut blob = VIRT.to_vec();
    set_header_word(&mut blob, TOTALSIZE, len + 1);
    assert_eq!(
        Fdt::new(&blob).unwrap_err(),
        FdtError::Truncated,
        "totalsize beyond the slice"
    );
}

#[test]
fn from_ptr_refuses_a_totalsize_above_the_limit() {
    let mut blob = VIRT.to_vec();
    set_header_word(&mut blob, TOTALSIZE, MAX_TOTAL_SIZE as u32 + 8);
    // SAFETY: from_ptr must reject the size before reading beyond the 40-byte header.
    assert_eq!(
        unsafe { Fdt::from_ptr(blob.as_ptr()) }.unwrap_err(),
        FdtError::BadLayout
    );
}

#[test]
fn unterminated_memory_reservation_map_is_bad_layout() {
    let mut b = small_tree();
    b.memreserve = vec![(1, 1)];
    let mut blob = b.blob();
    // Point the map at the last 16 bytes so that the terminator is missing.
    let start = blob.len() - 16;
    blob[start..].fill(0xff);
    set_header_word(&mut blob, OFF_RSVMAP, start as u32);
    assert_eq!(Fdt::new(&blob).unwrap_err(), FdtError::BadLayout);
}

#[test]
fn unterminated_and_out_of_range_names_are_bad_string() {
    // Property name offset past the strings block.
    let mut b = small_tree();
    b.strings.truncate(3);
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadString);
    // Last property name loses its NUL: the strings block ends inside it.
    let mut b = Builder::default();
    b.begin("")
        .prop("a", &[])
        .prop("last", &[])
        .end()
        .finish_token();
    b.strings.pop();
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadString);
    // Node name running to the end of the structure block without a NUL.
    let mut b = Builder::default();
    b.word(1);
    b.structs.extend_from_slice(b"noterm!!");
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadString);
    // Names must be UTF-8.
    let mut b = Builder::default();
    b.begin("").word(1);
    b.structs.extend_from_slice(&[0xff, 0xfe, 0, 0]);
    b.end().end().finish_token();
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadString);
}

#[test]
fn bad_tokens_are_bad_token() {
    // Unknown token.
    let mut b = Builder::default();
    b.begin("").word(7).end().finish_token();
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadToken);
    // Property length beyond the structure block, and one that wraps.
    for len in [0x1000, u32::MAX - 2] {
        let mut b = Builder::default();
        b.begin("");
        let off = b.name_off("p");
        b.word(3).word(len).word(off).end().finish_token();
        assert_eq!(
            Fdt::new(&b.blob()).unwrap_err(),
            FdtError::BadToken,
            "len {len:#x}"
        );
    }
    // No END token: the walk runs off the block.
    let mut b = Builder::default();
    b.begin("").end();
    assert_eq!(Fdt::new(&b.blob()).unwrap_err(), FdtError::BadToken);
    // An empty structure block.
    assert_eq!(
        Fdt::new(&Builder::default().blob()).unwrap_err(),
        FdtError::BadToken
    );
}

#[test]
fn trees_that_are_not_one_tree_are_bad_structure() {
    type Build = fn(&mut Builder) -> &mut Builder;
    let cases: [(&str, Build); 7] = [
        ("root never closed", |b| b.begin("").finish_token()),
        ("extra END_NODE", |b| b.begin("").end().end().finish_token()),
        ("second root", |b| {
            b.begin("").end().begin("").end().finish_token()
        }),
        ("property before the root", |b| {
            b.prop("p", &[]).begin("").end().finish_token()
        }),
        ("root with a name", |b| {
            b.begin("named-root").end().finish_token()
        }),
        ("property after a child", |b| {
            b.begin("")
                .begin("c")
                .end()
                .prop("late", &[])
                .end()
                .finish_token()
        }),
        ("no root at all", |b| b.finish_token()),
    ];
    for (what, build) in cases {
        let mut b = Builder::default();
        build(&mut b);
        assert_eq!(
            Fdt::new(&b.blob()).unwrap_err(),
            FdtError::BadStructure,
            "{what}"
        );
    }
}

#[test]
fn nesting_is_limited_to_max_depth() {
    let nested = |depth: usize| {
        let mut b = Builder::default();
        b.begin("");
        for _ in 1..depth {
            b.begin("n");
        }
        for _ in 0..depth {
            b.end();
        }
        b.finish_token();
        b.blob()
    };
    let deepest = nested(MAX_DEPTH);
    let fdt = Fdt::new(&deepest).expect("MAX_DEPTH is accepted");
    assert_eq!(fdt.nodes().last().unwrap().depth(), MAX_DEPTH);
    exercise(&fdt);
    assert_eq!(
        Fdt::new(&nested(MAX_DEPTH + 1)).unwrap_err(),
        FdtError::TooDeep
    );
    assert_eq!(Fdt::new(&nested(100_000)).unwrap_err(), FdtError::TooDeep);
}

#[test]
fn nops_anywhere_are_skipped() {
    let mut b = Builder::default();
    b.word(4)
        .begin("")
        .word(4)
        .prop_u32("x", 1)
        .word(4)
        .begin("c")
        .word(4)
        .end()
        .word(4)
        .end()
        .word(4)
        .finish_token();
    let blob = b.blob();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(fdt.property("/", "x"), Some(&[0, 0, 0, 1][..]));
    assert!(fdt.find_node("/c").is_some());
    exercise(&fdt);
}

#[test]
fn huge_cell_counts_are_not_decoded_and_do_not_panic() {
    let mut b = Builder::default();
    b.begin("")
        .prop_u32("#address-cells", u32::MAX)
        .prop_u32("#size-cells", u32::MAX);
    b.begin("memory@0")
        .prop_str("device_type", "memory")
        .prop("reg", &[1; 64])
        .end();
    b.begin("reserved-memory")
        .prop_u32("#address-cells", u32::MAX)
        .prop_u32("#size-cells", 0)
        .end();
    b.begin("cpus")
        .prop_u32("#address-cells", 0)
        .prop_u32("#size-cells", 0);
    b.begin("cpu@0").prop("reg", &[0; 8]).end().end();
    b.end().finish_token();
    let blob = b.blob();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(fdt.memory().count(), 0);
    assert_eq!(fdt.cpus().count(), 0, "zero cells: no entry can be decoded");
    let regions = [("hyp", 0x4020_0000, 0x200_0000)];
    let mut out = vec![0u8; 4096];
    let edits = Amendments {
        reserve_no_map: &regions,
        ..Default::default()
    };
    assert_eq!(amend(&fdt, &mut out, &edits), Err(FdtError::BadEdit));
    exercise(&fdt);
}
