//! placeholder
#![no_std]
#![no_main]
verso_test_kernels::entry!(main);
fn main() -> ! {
    verso_test_kernels::smccc::system_off()
}
