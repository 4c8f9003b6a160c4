//! The configuration file: any text is a configuration or an error that names the field,
//! never a panic; what validates prints back as TOML that parses to the same settings.
#![no_main]

#[allow(dead_code, clippy::all)]
#[path = "../../../node/src/config/mod.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = toml::from_str::<config::Config>(text) else { return };
    if parsed.validate().is_ok() {
        let printed = parsed.to_toml();
        let again: config::Config = toml::from_str(&printed).expect("printed config parses");
        assert_eq!(again.to_toml(), printed, "printing is stable");
    }
});
