//! Reading QEMU's real `virt` device tree: what the hypervisor learns from it at boot.

mod fdt_common;

use fdt_common::*;
use verso::fdt::{Fdt, FdtToken, ReservedRegion};

fn virt() -> Fdt<'static> {
    Fdt::new(VIRT).expect("QEMU's DTB parses")
}

#[test]
fn total_size_is_the_header_totalsize() {
    assert_eq!(virt().total_size(), VIRT.len());
    assert_eq!(virt().total_size(), header_word(VIRT, TOTALSIZE) as usize);
}

#[test]
fn memory_is_one_gib_at_0x4000_0000() {
    assert_eq!(
        virt().memory().collect::<Vec<_>>(),
        [(0x4000_0000, 0x4000_0000)]
    );
}

#[test]
fn four_cpus_with_mpidr_0_to_3() {
    assert_eq!(virt().cpus().collect::<Vec<_>>(), [0, 1, 2, 3]);
}

#[test]
fn stdout_uart_is_the_pl011_at_0x0900_0000() {
    assert_eq!(virt().stdout_uart(), Some(0x0900_0000));
}

#[test]
fn stdout_path_through_an_alias_with_options_resolves() {
    let mut b = Builder::default();
    b.begin("")
        .prop_u32("#address-cells", 1)
        .prop_u32("#size-cells", 1);
    b.begin("aliases")
        .prop_str("serial0", "/soc/uart@2000")
        .end();
    b.begin("chosen")
        .prop_str("stdout-path", "serial0:115200n8")
        .end();
    b.begin("soc")
        .prop_u32("#address-cells", 1)
        .prop_u32("#size-cells", 1);
    b.begin("uart@2000")
        .prop_str("compatible", "arm,pl011")
        .prop("reg", &[0, 0, 0x20, 0, 0, 0, 0x10, 0])
        .end();
    b.end().end().finish_token();
    let blob = b.blob();
    assert_eq!(Fdt::new(&blob).unwrap().stdout_uart(), Some(0x2000));
}

#[test]
fn stdout_uart_that_is_not_a_pl011_is_none() {
    let mut b = Builder::default();
    b.begin("")
        .begin("chosen")
        .prop_str("stdout-path", "/serial@10")
        .end();
    b.begin("serial@10")
        .prop_str("compatible", "ns16550a")
        .prop("reg", &[0, 0, 0, 0x10, 0, 0, 1, 0])
        .end();
    b.end().finish_token();
    let blob = b.blob();
    assert_eq!(Fdt::new(&blob).unwrap().stdout_uart(), None);
}

#[test]
fn smmu_ecam_gic_and_uart_registers_are_where_qemu_puts_them() {
    let fdt = virt();
    assert_eq!(
        fdt.compatible_reg("arm,smmu-v3"),
        Some((0x0905_0000, 0x2_0000))
    );
    assert_eq!(
        fdt.compatible_reg("pci-host-ecam-generic"),
        Some((0x40_1000_0000, 0x1000_0000))
    );
    assert_eq!(
        fdt.compatible_reg("arm,gic-v3"),
        Some((0x0800_0000, 0x1_0000))
    );
    assert_eq!(
        fdt.compatible_reg("arm,gic-v3-its"),
        Some((0x0808_0000, 0x2_0000))
    );
    // Second entry of a multi-value compatible list matches too.
    assert_eq!(
        fdt.compatible_reg("arm,primecell"),
        Some((0x0903_0000, 0x1000))
    );
    assert!(fdt.has_compatible("arm,smmu-v3"));
    assert!(fdt.has_compatible("arm,pl011"));
    assert!(
        !fdt.has_compatible("arm,smmu"),
        "a prefix of an entry is not a match"
    );
    assert_eq!(fdt.compatible_reg("no,such-device"), None);
}

#[test]
fn property_finds_nodes_by_path_with_or_without_unit_address() {
    let fdt = virt();
    let iommu_map = [0u32, 0x8007, 0, 0x1_0000].map(u32::to_be_bytes).concat();
    assert_eq!(
        fdt.property("/pcie@10000000", "iommu-map"),
        Some(&iommu_map[..])
    );
    assert_eq!(fdt.property("/pcie", "iommu-map"), Some(&iommu_map[..]));
    assert_eq!(fdt.property("/", "model"), Some(&b"linux,dummy-virt\0"[..]));
    assert_eq!(fdt.property("/cpus/cpu@2", "reg"), Some(&[0, 0, 0, 2][..]));
    assert_eq!(
        fdt.property("/intc@8000000/its@8080000", "msi-controller"),
        Some(&[][..])
    );
    assert_eq!(fdt.property("/cpus/cpu@4", "reg"), None);
    assert_eq!(
        fdt.property("/its@8080000", "reg"),
        None,
        "a grandchild is not a child of the root"
    );
    assert_eq!(fdt.property("/pcie@10000001", "reg"), None);
    assert_eq!(fdt.property("/chosen", "no-such-property"), None);
}

#[test]
fn virt_without_kernel_has_no_bootargs_initrd_or_reserved_memory() {
    let fdt = virt();
    assert_eq!(fdt.bootargs(), None);
    assert_eq!(fdt.initrd(), None);
    assert_eq!(fdt.reserved_memory().count(), 0);
    assert_eq!(fdt.boot_cpuid_phys(), 0);
}

#[test]
fn bootargs_and_initrd_come_from_chosen() {
    let fdt = Fdt::new(VIRT_BOOTARGS).unwrap();
    assert_eq!(
        fdt.bootargs(),
        Some("verso.log=info console=ttyAMA0 verso.payload=44000000 quiet")
    );
    assert_eq!(fdt.initrd(), Some((0x4800_0000, 0x4800_2000)));
}

#[test]
fn one_cell_initrd_properties_are_read_too() {
    let mut b = Builder::default();
    b.begin("").begin("chosen");
    b.prop_u32("linux,initrd-start", 0x4800_0000)
        .prop_u32("linux,initrd-end", 0x4900_0000);
    b.end().end().finish_token();
    let blob = b.blob();
    assert_eq!(
        Fdt::new(&blob).unwrap().initrd(),
        Some((0x4800_0000, 0x4900_0000))
    );
}

#[test]
fn reserved_memory_lists_memreserve_entries_then_static_children() {
    let mut b = Builder {
        memreserve: vec![(0x4800_0000, 0x1000)],
        ..Default::default()
    };
    b.begin("")
        .prop_u32("#address-cells", 2)
        .prop_u32("#size-cells", 2);
    b.begin("reserved-memory")
        .prop_u32("#address-cells", 1)
        .prop_u32("#size-cells", 1)
        .prop("ranges", &[]);
    b.begin("hyp@40200000")
        .prop("reg", &[0x40, 0x20, 0, 0, 0x02, 0, 0, 0])
        .prop("no-map", &[])
        .end();
    b.begin("shm@50000000")
        .prop(
            "reg",
            &[0x50, 0, 0, 0, 0, 0x10, 0, 0, 0x51, 0, 0, 0, 0, 0x10, 0, 0],
        )
        .end();
    b.begin("pool").prop("size", &[0, 0x10, 0, 0]).end(); // dynamic: no address
    b.end().end().finish_token();
    let blob = b.blob();
    let regions: Vec<_> = Fdt::new(&blob).unwrap().reserved_memory().collect();
    let r = |name, base, size, no_map| ReservedRegion {
        name,
        base,
        size,
        no_map,
    };
    assert_eq!(
        regions,
        [
            r("/memreserve/", 0x4800_0000, 0x1000, false),
            r("hyp@40200000", 0x4020_0000, 0x200_0000, true),
            r("shm@50000000", 0x5000_0000, 0x10_0000, false),
            r("shm@50000000", 0x5100_0000, 0x10_0000, false),
        ]
    );
}

#[test]
fn tokens_walk_the_whole_tree_balanced() {
    let fdt = virt();
    let mut depth = 0i32;
    let mut nodes = 0;
    for token in fdt.tokens() {
        match token {
            FdtToken::BeginNode(_) => {
                depth += 1;
                nodes += 1;
            }
            FdtToken::EndNode => depth -= 1,
            FdtToken::Property { .. } => assert!(depth > 0),
        }
        assert!(depth >= 0);
    }
    assert_eq!(depth, 0);
    assert_eq!(nodes, fdt.nodes().count());
    assert!(walk(&fdt).contains(&Entry::Node("/cpus/cpu-map/socket0/cluster0/core3".into())));
}

#[test]
fn from_ptr_reads_totalsize_from_the_header() {
    // Copy into a buffer with trailing garbage: only `totalsize` bytes belong to the tree.
    let mut buf = VIRT.to_vec();
    buf.extend_from_slice(&[0xff; 64]);
    // SAFETY: `buf` holds the whole blob and outlives `fdt`.
    let fdt = unsafe { Fdt::from_ptr(buf.as_ptr()) }.unwrap();
    assert_eq!(fdt.total_size(), VIRT.len());
    assert_eq!(fdt.as_bytes(), VIRT);
}
