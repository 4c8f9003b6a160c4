//! Python files as `pyagent analyze` reads them: decoding (PEP 263: BOM, `coding:`
//! declarations, codec aliases) never panics on arbitrary bytes, and decoded text is
//! exactly the input when no other encoding is declared.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyagent_agents::python::decode_source;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = decode_source(data) {
        if let Ok(plain) = std::str::from_utf8(data) {
            if !plain.starts_with('\u{feff}') && plain.is_ascii() {
                assert_eq!(text, plain, "ASCII text decodes to itself under any accepted encoding");
            }
        }
    }
});
