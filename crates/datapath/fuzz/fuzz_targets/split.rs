#![no_main]
// The check lives in src/lib.rs, shared with the corpus replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| twill_datapath_fuzz::split(data));
