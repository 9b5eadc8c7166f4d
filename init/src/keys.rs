//! The public keys built into this init (see build.rs).

include!(concat!(env!("OUT_DIR"), "/trusted_keys.rs"));
