//! Shell completions and man pages come from the same clap definitions as
//! the command (issue 15), so they name every subcommand and option.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

use std::process::Command;

fn cairn(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).output().unwrap();
    assert!(o.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn completions_name_every_command_and_option() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = cairn(&["completions", shell]);
        for word in ["manifest", "sign", "sign-command", "unsigned", "json", "convert", "board"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // The bash script parses (bash -n), where bash is installed.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cairn.bash");
    std::fs::write(&f, cairn(&["completions", "bash"])).unwrap();
    if let Ok(o) = Command::new("bash").arg("-n").arg(&f).output() {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(["completions", "tcsh"]).output().unwrap();
    assert!(!o.status.success());
}

#[test]
fn man_pages_are_written_for_every_subcommand() {
    let top = cairn(&["man"]);
    assert!(top.starts_with(".ie") || top.contains(".TH cairn 1"), "{}", &top[..top.len().min(200)]);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("man1");
    let listed = cairn(&["man", "--out", out.to_str().unwrap()]);
    for page in ["cairn", "cairn-key-generate", "cairn-layer-build", "cairn-manifest-sign", "cairn-image-assemble"] {
        let path = out.join(format!("{page}.1"));
        assert!(listed.contains(path.to_str().unwrap()), "{listed}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!(".TH {page} 1")), "{page}: {}", &text[..text.len().min(300)]);
    }
    let sign = std::fs::read_to_string(out.join("cairn-manifest-sign.1")).unwrap();
    assert!(sign.contains("sign\\-command") && sign.contains("CAIRN_SIGN_FILE"), "{sign}");
    // Rendered by man(1), where it is installed.
    if let Ok(o) = Command::new("man").arg("-l").arg(out.join("cairn-manifest-sign.1")).env("MANWIDTH", "100").output()
    {
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("--sign-command"));
        }
    }
}
