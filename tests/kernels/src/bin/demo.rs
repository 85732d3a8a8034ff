#![no_std]
#![no_main]
use verso_test_kernels::harness::{run_suite, Test};
verso_test_kernels::entry!(main);
static TESTS: &[Test] = &[Test { name: "el1", run: || { verso_test_kernels::ensure!(verso_test_kernels::cpus::current_el() == 1, "not EL1"); Ok(()) } }];
fn main() -> ! { run_suite("host", TESTS) }
