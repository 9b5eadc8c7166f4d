//! Text or JSON: what `--json` switches. The JSON schemas are documented in
//! docs/cli.md ("JSON output") and are stable: fields are only ever added.

use anyhow::Result;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON document on stdout instead of text.
    pub json: bool,
}

impl Output {
    /// Print `v` as the command's JSON document.
    pub fn print_json(&self, v: &serde_json::Value) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// A digest as every JSON document (and text output) writes it.
pub fn digest(d: &cairn_format::digest::Digest) -> String {
    format!("sha256:{d}")
}
