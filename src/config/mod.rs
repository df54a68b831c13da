//! The configuration file: TOML, serde, unknown keys rejected.
