//! Arbitrary lines through the real runtime (`run_with`) with a pass-through filter.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    opensmtpd_filter_fuzz::runtime(data);
});
