//! `protocol::parse_line` on arbitrary bytes; requests answered every way, validated.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    opensmtpd_filter_fuzz::parse_line(data);
});
