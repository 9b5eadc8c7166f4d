//! Skopeo-style references (`oci:DIR:TAG`, `oci-archive:FILE:TAG`,
//! `docker-archive:FILE:REF`) and the platform taken from the board, on
//! the command line and in appliance files (issue 15).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

use std::path::Path;
use std::process::Command;

use cairn_format::digest::Digest;
use serde_json::{json, Value};

fn cairn(args: &[&str], dir: &Path) -> Result<Value, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).arg("--json").current_dir(dir).output().unwrap();
    if o.status.success() {
        Ok(serde_json::from_slice(&o.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A tar with one file `which` holding `content`.
fn layer_tar(content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "which", content.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

fn blob(dir: &Path, bytes: &[u8]) -> Value {
    let hex = Digest::of(bytes).to_string();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// One single-layer image for `arch`; its manifest descriptor.
fn image(dir: &Path, content: &str, arch: &str) -> Value {
    let layer = layer_tar(content);
    let config = json!({"architecture": arch, "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", Digest::of(&layer))]}});
    let mut c = blob(dir, &serde_json::to_vec(&config).unwrap());
    c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut l = blob(dir, &layer);
    l["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": c, "layers": [l]});
    let mut m = blob(dir, &serde_json::to_vec(&manifest).unwrap());
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["platform"] = json!({"os": "linux", "architecture": arch});
    m
}

/// An OCI layout: tag `app` a two-platform index (amd64, arm64), tag
/// `other` a single amd64 image; and the same as a tar.
fn layout(d: &Path) {
    let l = d.join("layout");
    let amd = image(&l, "app-amd64", "amd64");
    let arm = image(&l, "app-arm64", "arm64");
    let idx =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [amd, arm]});
    let mut app = blob(&l, &serde_json::to_vec(&idx).unwrap());
    app["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    app["annotations"] = json!({"org.opencontainers.image.ref.name": "app"});
    let mut other = image(&l, "other", "amd64");
    other["annotations"] = json!({"org.opencontainers.image.ref.name": "other"});
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [app, other]});
    std::fs::write(l.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &l).unwrap();
    std::fs::write(d.join("layout.tar"), b.into_inner().unwrap()).unwrap();
}

/// The content of `which` in a built layer, read with backhand.
fn which(image: &Path) -> String {
    use backhand::{FilesystemReader, InnerNode};
    use std::io::Read;
    let fs = FilesystemReader::from_reader(std::io::BufReader::new(std::fs::File::open(image).unwrap())).unwrap();
    for node in fs.files() {
        if let InnerNode::File(f) = &node.inner {
            if node.fullpath == Path::new("/which") {
                let mut s = String::new();
                fs.file(f).reader().read_to_string(&mut s).unwrap();
                return s;
            }
        }
    }
    panic!("no /which in {}", image.display())
}

#[test]
fn tags_and_the_board_pick_the_image() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    layout(d);
    let build = |src: &str, extra: &[&str], out: &str| {
        let mut a = vec!["layer", "build", src, "--out", out];
        a.extend_from_slice(extra);
        cairn(&a, d).map(|_| which(&d.join(out)))
    };
    assert_eq!(build("oci:layout:other", &[], "o1.sqfs").unwrap(), "other");
    // --json names the image each layer came from, digests as sha256:<hex>.
    let j = cairn(&["layer", "build", "oci:layout:other", "--out", "o0.sqfs"], d).unwrap();
    let image = &j["layers"][0]["image"];
    assert_eq!(image["format"], "oci");
    assert!(image["manifest_digest"].as_str().unwrap().starts_with("sha256:"), "{image}");
    assert!(image["layers"][0]["diff_id"].as_str().unwrap().starts_with("sha256:"), "{image}");
    assert_eq!(build("oci-archive:layout.tar:other", &[], "o2.sqfs").unwrap(), "other");
    // A multi-platform tag: the board says which.
    assert_eq!(build("oci:layout:app", &["--board", "qemu-aarch64"], "a1.sqfs").unwrap(), "app-arm64");
    assert_eq!(build("oci-archive:layout.tar:app", &["--board", "qemu-x86_64"], "a2.sqfs").unwrap(), "app-amd64");
    // --platform wins over --board.
    let out = build("oci:layout:app", &["--board", "qemu-x86_64", "--platform", "linux/arm64"], "a3.sqfs");
    assert_eq!(out.unwrap(), "app-arm64");
    let e = build("oci:layout:app", &[], "a4.sqfs").unwrap_err();
    assert!(e.contains("--platform"), "{e}");
    let e = build("oci:layout:nope", &[], "a5.sqfs").unwrap_err();
    assert!(e.contains("no image tagged \"nope\"") && e.contains("app, other"), "{e}");
    let e = build("oci:layout:app", &["--board", "pdp-11"], "a6.sqfs").unwrap_err();
    assert!(e.contains("unknown board"), "{e}");
    // Every board has a platform.
    for b in cairn_board::all() {
        assert!(build("oci:layout:app", &["--board", b.name], "b.sqfs").is_ok(), "{}", b.name);
    }

    // In an appliance file, relative to it.
    std::fs::write(
        d.join("appliance.toml"),
        "appliance = \"refs\"\nversion = 1\ncompatible = \"cairn-test\"\n\n[[layer]]\nname = \"other\"\n\
         source = \"oci-archive:layout.tar:other\"\n\n[[container]]\nname = \"c\"\nlayers = [\"other\"]\nargv = [\"/x\"]\n",
    )
    .unwrap();
    let m =
        cairn(&["manifest", "build", "appliance.toml", "--unsigned", "--out", "m.cairn", "--layers", "ls"], d).unwrap();
    assert_eq!(m["layers"][0]["name"], "other");
    assert_eq!(which(&d.join("ls/other.squashfs")), "other");
    // A multi-platform tag in an appliance file: the board says which.
    let multi =
        std::fs::read_to_string(d.join("appliance.toml")).unwrap().replace("layout.tar:other", "layout.tar:app");
    std::fs::write(d.join("multi.toml"), multi).unwrap();
    let e = cairn(&["manifest", "build", "multi.toml", "--unsigned", "--out", "m2.cairn", "--layers", "l2"], d)
        .unwrap_err();
    assert!(e.contains("--platform"), "{e}");
    for (board, want) in [("qemu-aarch64", "app-arm64"), ("qemu-x86_64", "app-amd64")] {
        let args =
            ["manifest", "build", "multi.toml", "--unsigned", "--out", "m3.cairn", "--layers", "l3", "--board", board];
        cairn(&args, d).unwrap();
        assert_eq!(which(&d.join("l3/other.squashfs")), want);
    }
}
