//! The public keys, the product's compatibility string and the fallback
//! rollback floor built into this init (see build.rs).

include!(concat!(env!("OUT_DIR"), "/trusted_keys.rs"));
