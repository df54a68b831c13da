//! The config file: TOML text through the same loader as `relayd --config` and `check-config`
//! (serde into the raw shape, defaults, the rules between values), then `--role` for each role.
//!
//! Checked beyond "no panic": an error names the fuzz file and, when it names a line, a line
//! that exists; a config that loads takes every `--role` without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::config::{Config, ConfigError, Role};

/// Not a file on disk: `Config::error_at` then names no line rather than reading one.
const SOURCE: &str = "<fuzz input>";

fuzz_target!(|data: &[u8]| {
    // A file that is not UTF-8 is refused by `Config::load` before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, SOURCE.to_string()) {
        Ok(config) => {
            for role in [Role::Primary, Role::Standby, Role::Witness] {
                if let Err(error) = config.clone().with_role(role) {
                    check_error(&error, text);
                }
            }
        }
        Err(error) => check_error(&error, text),
    }
});

fn check_error(error: &ConfigError, text: &str) {
    assert_eq!(error.file, SOURCE);
    if let Some(line) = error.line {
        // A file ending without a newline still has its last line; an error at the very end
        // of one ending with a newline may point just past it.
        let lines = text.lines().count().max(1) + 1;
        assert!((1..=lines).contains(&line), "line {line} of {lines}: {error}");
    }
    assert!(!error.to_string().is_empty());
}
