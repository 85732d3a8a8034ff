//! Re-encoding the DTB for the host: what the host must (and must not) see.

mod fdt_common;

use fdt_common::*;
use verso::fdt::{amend, strip_words, Amendments, Fdt, FdtError, ReservedRegion};

const HYP: (&str, u64, u64) = ("hyp", 0x4020_0000, 0x200_0000);

fn host_edits(bootargs: Option<&str>) -> Amendments<'_> {
    Amendments {
        reserve_no_map: core::slice::from_ref(&HYP),
        remove_compatible: &["arm,smmu-v3"],
        remove_properties: &["iommu-map", "iommu-map-mask"],
        bootargs,
    }
}

fn amend_vec(src: &Fdt, edits: &Amendments) -> Result<Vec<u8>, FdtError> {
    let mut out = vec![0u8; 64 * 1024];
    let n = amend(src, &mut out, edits)?;
    out.truncate(n);
    Ok(out)
}

fn is_hyp_addition(e: &Entry) -> bool {
    e.path().starts_with("/reserved-memory")
}

fn is_bootargs(e: &Entry) -> bool {
    matches!(e, Entry::Prop(p, n, _) if p == "/chosen" && n == "bootargs")
}

#[test]
fn amended_virt_reserves_hyp_hides_smmu_replaces_bootargs_and_keeps_everything_else() {
    let src = Fdt::new(VIRT_BOOTARGS).unwrap();
    let mut buf = [0u8; 256];
    let stripped = strip_words(src.bootargs().unwrap(), "verso.", &mut buf).unwrap();
    assert_eq!(stripped, "console=ttyAMA0 quiet");
    let blob = amend_vec(&src, &host_edits(Some(stripped))).unwrap();
    let new = Fdt::new(&blob).expect("amended blob parses");

    // What the host must see.
    assert_eq!(new.bootargs(), Some("console=ttyAMA0 quiet"));
    let hyp = ReservedRegion {
        name: "hyp@40200000",
        base: 0x4020_0000,
        size: 0x200_0000,
        no_map: true,
    };
    assert_eq!(new.reserved_memory().collect::<Vec<_>>(), [hyp]);
    assert_eq!(
        new.property("/reserved-memory", "#address-cells"),
        Some(&[0, 0, 0, 2][..])
    );
    assert_eq!(
        new.property("/reserved-memory", "#size-cells"),
        Some(&[0, 0, 0, 2][..])
    );
    assert_eq!(new.property("/reserved-memory", "ranges"), Some(&[][..]));
    assert_eq!(
        new.property("/reserved-memory/hyp@40200000", "no-map"),
        Some(&[][..])
    );
    // What it must not.
    assert!(!new.has_compatible("arm,smmu-v3"));
    assert_eq!(new.find_node("/smmuv3@9050000").map(|n| n.name()), None);
    assert_eq!(new.property("/pcie@10000000", "iommu-map"), None);
    assert!(
        new.property("/pcie@10000000", "msi-map").is_some(),
        "only the named properties go"
    );
    // Everything else unchanged, in order: the source walk minus the removals equals the amended
    // walk minus the additions.
    let expected: Vec<Entry> = walk(&src)
        .into_iter()
        .filter(|e| !e.path().starts_with("/smmuv3@9050000"))
        .filter(|e| !matches!(e, Entry::Prop(_, n, _) if n == "iommu-map" || n == "iommu-map-mask"))
        .filter(|e| !is_bootargs(e))
        .collect();
    let kept: Vec<Entry> = walk(&new)
        .into_iter()
        .filter(|e| !is_hyp_addition(e) && !is_bootargs(e))
        .collect();
    assert_eq!(kept, expected);
    assert_eq!(
        walk(&src).len() - expected.len(),
        1 + 7 + 1 + 1,
        "smmu node + its 7 properties + iommu-map + bootargs"
    );
    assert_eq!(
        new.memory().collect::<Vec<_>>(),
        [(0x4000_0000, 0x4000_0000)]
    );
    assert_eq!(new.initrd(), Some((0x4800_0000, 0x4800_2000)));
    assert_eq!(new.cpus().count(), 4);
}

#[test]
fn amended_header_is_version_17_with_exact_sizes() {
    let src = Fdt::new(VIRT).unwrap();
    let mut out = vec![0xaa; 64 * 1024];
    let n = amend(&src, &mut out, &host_edits(Some("console=ttyAMA0"))).unwrap();
    let blob = &out[..n];
    assert_eq!(n % 8, 0);
    assert_eq!(header_word(blob, 0), 0xd00d_feed);
    assert_eq!(header_word(blob, TOTALSIZE) as usize, n);
    assert_eq!(header_word(blob, VERSION), 17);
    assert_eq!(header_word(blob, LAST_COMP), 16);
    assert_eq!(header_word(blob, BOOT_CPUID), header_word(VIRT, BOOT_CPUID));
    let off_struct = header_word(blob, OFF_STRUCT) as usize;
    let off_strings = header_word(blob, OFF_STRINGS) as usize;
    assert_eq!(header_word(blob, OFF_RSVMAP), 40);
    assert_eq!(
        off_struct,
        40 + 16,
        "empty reservation map: just the terminator"
    );
    assert_eq!(
        off_struct + header_word(blob, SIZE_STRUCT) as usize,
        off_strings,
        "blocks are packed"
    );
    let strings_end = off_strings + header_word(blob, SIZE_STRINGS) as usize;
    assert!(
        n - strings_end < 8 && blob[strings_end..].iter().all(|&b| b == 0),
        "padding is zeroed"
    );
    // Source lacked "bootargs" and "no-map" names: they were appended.
    assert!(header_word(blob, SIZE_STRINGS) > header_word(VIRT, SIZE_STRINGS));
}

#[test]
fn bootargs_and_chosen_are_added_when_absent() {
    // virt.dtb has /chosen without bootargs.
    let src = Fdt::new(VIRT).unwrap();
    let edits = Amendments {
        bootargs: Some("quiet"),
        ..Default::default()
    };
    let blob = amend_vec(&src, &edits).unwrap();
    let new = Fdt::new(&blob).unwrap();
    assert_eq!(new.bootargs(), Some("quiet"));
    assert_eq!(
        new.stdout_uart(),
        Some(0x0900_0000),
        "the rest of /chosen is kept"
    );
    // A tree without /chosen gets one.
    let blob = small_tree().blob();
    let src = Fdt::new(&blob).unwrap();
    let out = amend_vec(&src, &edits).unwrap();
    let new = Fdt::new(&out).unwrap();
    assert_eq!(new.bootargs(), Some("quiet"));
    assert_eq!(
        walk(&new)
            .into_iter()
            .filter(|e| !e.path().starts_with("/chosen"))
            .collect::<Vec<_>>(),
        walk(&src)
    );
}

#[test]
fn bootargs_are_inserted_before_the_first_subnode_of_chosen() {
    let mut b = Builder::default();
    b.begin("")
        .begin("chosen")
        .prop_str("stdout-path", "/uart")
        .begin("sub")
        .end()
        .end()
        .end()
        .finish_token();
    let blob = b.blob();
    let out = amend_vec(
        &Fdt::new(&blob).unwrap(),
        &Amendments {
            bootargs: Some("x"),
            ..Default::default()
        },
    )
    .unwrap();
    let new = Fdt::new(&out).expect("properties still precede subnodes");
    assert_eq!(new.bootargs(), Some("x"));
    assert!(new.find_node("/chosen/sub").is_some());
}

#[test]
fn round_trip_without_edits_is_equivalent_and_stable() {
    for fixture in [VIRT, VIRT_BOOTARGS] {
        let src = Fdt::new(fixture).unwrap();
        let once = amend_vec(&src, &Amendments::default()).unwrap();
        let first = Fdt::new(&once).unwrap();
        assert_eq!(walk(&first), walk(&src));
        assert_eq!(first.mem_reservations().count(), 0);
        // The source has no free space beyond padding; QEMU leaves 8 bytes between the header
        // and the reservation map, the encoder does not. Encoding an encoding changes nothing.
        assert_eq!(once.len(), fixture.len() - 8);
        let twice = amend_vec(&first, &Amendments::default()).unwrap();
        assert_eq!(twice, once);
    }
}

#[test]
fn memreserve_entries_are_preserved() {
    let mut b = small_tree();
    b.memreserve = vec![(0x8000_0000, 0x1000), (0x9000_0000, 0x2000)];
    let blob = b.blob();
    let src = Fdt::new(&blob).unwrap();
    let out = amend_vec(&src, &host_edits(None)).unwrap();
    let new = Fdt::new(&out).unwrap();
    assert_eq!(
        new.mem_reservations().collect::<Vec<_>>(),
        [(0x8000_0000, 0x1000), (0x9000_0000, 0x2000)]
    );
    let regions: Vec<_> = new
        .reserved_memory()
        .map(|r| (r.name, r.base, r.size, r.no_map))
        .collect();
    assert_eq!(
        regions,
        [
            ("/memreserve/", 0x8000_0000, 0x1000, false),
            ("/memreserve/", 0x9000_0000, 0x2000, false),
            ("hyp@40200000", 0x4020_0000, 0x200_0000, true)
        ]
    );
}

#[test]
fn regions_join_an_existing_reserved_memory_node() {
    let src = Fdt::new(VIRT).unwrap();
    let first = amend_vec(&src, &host_edits(None)).unwrap();
    let first = Fdt::new(&first).unwrap();
    let more = [
        ("canary", 0x4100_0000, 0x1000),
        ("log", 0x1_0000_0000, 0x10_0000),
    ];
    let out = amend_vec(
        &first,
        &Amendments {
            reserve_no_map: &more,
            ..Default::default()
        },
    )
    .unwrap();
    let new = Fdt::new(&out).unwrap();
    let names: Vec<_> = new
        .reserved_memory()
        .map(|r| (r.name, r.base, r.size, r.no_map))
        .collect();
    assert_eq!(
        names,
        [
            ("hyp@40200000", 0x4020_0000, 0x200_0000, true),
            ("canary@41000000", 0x4100_0000, 0x1000, true),
            ("log@100000000", 0x1_0000_0000, 0x10_0000, true)
        ]
    );
    let resmem_nodes = walk(&new)
        .iter()
        .filter(|e| **e == Entry::Node("/reserved-memory".into()))
        .count();
    assert_eq!(resmem_nodes, 1);
}

#[test]
fn regions_use_the_cells_of_an_existing_reserved_memory_node() {
    let mut b = Builder::default();
    b.begin("")
        .prop_u32("#address-cells", 1)
        .prop_u32("#size-cells", 1);
    b.begin("reserved-memory")
        .prop_u32("#address-cells", 1)
        .prop_u32("#size-cells", 1)
        .prop("ranges", &[])
        .end();
    b.end().finish_token();
    let blob = b.blob();
    let src = Fdt::new(&blob).unwrap();
    let out = amend_vec(&src, &host_edits(None)).unwrap();
    let new = Fdt::new(&out).unwrap();
    assert_eq!(
        new.property("/reserved-memory/hyp@40200000", "reg"),
        Some(&[0x40, 0x20, 0, 0, 0x02, 0, 0, 0][..])
    );
    // A region above 4 GiB cannot be written in one cell.
    let high = [("hi", 0x1_0000_0000, 0x1000)];
    let edits = Amendments {
        reserve_no_map: &high,
        ..Default::default()
    };
    assert_eq!(amend_vec(&src, &edits), Err(FdtError::BadEdit));
}

#[test]
fn invalid_edits_are_refused() {
    let src = Fdt::new(VIRT).unwrap();
    let bad_regions: [&[(&str, u64, u64)]; 6] = [
        &[("", 0x4020_0000, 0x1000)],
        &[("a@b", 0x4020_0000, 0x1000)],
        &[("a/b", 0x4020_0000, 0x1000)],
        &[("a\0", 0x4020_0000, 0x1000)],
        &[("empty", 0x4020_0000, 0)],
        &[("wraps", u64::MAX, 2)],
    ];
    for regions in bad_regions {
        let edits = Amendments {
            reserve_no_map: regions,
            ..Default::default()
        };
        assert_eq!(
            amend_vec(&src, &edits),
            Err(FdtError::BadEdit),
            "{regions:?}"
        );
    }
    let edits = Amendments {
        bootargs: Some("a\0b"),
        ..Default::default()
    };
    assert_eq!(amend_vec(&src, &edits), Err(FdtError::BadEdit));
    let edits = Amendments {
        remove_compatible: &["linux,dummy-virt"],
        ..Default::default()
    };
    assert_eq!(
        amend_vec(&src, &edits),
        Err(FdtError::BadEdit),
        "the root cannot be removed"
    );
    // A second region with an existing node name would make two nodes with one name.
    let once = amend_vec(&src, &host_edits(None)).unwrap();
    let once = Fdt::new(&once).unwrap();
    assert_eq!(amend_vec(&once, &host_edits(None)), Err(FdtError::BadEdit));
}

#[test]
fn out_too_small_is_no_space_at_every_length() {
    let src = Fdt::new(VIRT_BOOTARGS).unwrap();
    let edits = host_edits(Some("console=ttyAMA0"));
    let needed = amend_vec(&src, &edits).unwrap().len();
    let mut out = vec![0u8; needed];
    for len in 0..needed {
        assert_eq!(
            amend(&src, &mut out[..len], &edits),
            Err(FdtError::NoSpace),
            "len {len}"
        );
    }
    assert_eq!(amend(&src, &mut out, &edits), Ok(needed));
    assert!(Fdt::new(&out).is_ok());
}

#[test]
fn removing_a_node_removes_its_whole_subtree() {
    let src = Fdt::new(VIRT).unwrap();
    let edits = Amendments {
        remove_compatible: &["arm,gic-v3"],
        ..Default::default()
    };
    let out = amend_vec(&src, &edits).unwrap();
    let new = Fdt::new(&out).unwrap();
    assert!(!new.has_compatible("arm,gic-v3"));
    assert!(
        !new.has_compatible("arm,gic-v3-its"),
        "the ITS child went with its parent"
    );
    assert!(new.has_compatible("arm,pl011"), "the next sibling is kept");
    assert_eq!(walk(&new).len(), walk(&src).len() - 1 - 10 - 1 - 5);
}

#[test]
fn qemu_runtime_blob_with_free_space_amends_to_a_compact_blob() {
    // At boot QEMU's header says totalsize = 1 MiB: the tree plus free space for editing.
    let mut blob = VIRT_BOOTARGS.to_vec();
    blob.resize(1 << 20, 0);
    set_header_word(&mut blob, TOTALSIZE, 1 << 20);
    // SAFETY: `blob` holds the full 1 MiB `totalsize` and outlives `src`.
    let src = unsafe { Fdt::from_ptr(blob.as_ptr()) }.unwrap();
    assert_eq!(src.total_size(), 1 << 20);
    let out = amend_vec(&src, &host_edits(Some("console=ttyAMA0"))).unwrap();
    assert!(
        out.len() < VIRT_BOOTARGS.len() + 256,
        "no free space is carried over: {}",
        out.len()
    );
    let new = Fdt::new(&out).unwrap();
    assert_eq!(new.total_size(), out.len());
    assert_eq!(new.bootargs(), Some("console=ttyAMA0"));
}
