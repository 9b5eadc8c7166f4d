//! Image defaults (issue 15): a container built from an image takes its
//! Entrypoint + Cmd, Env, WorkingDir and User unless the appliance file
//! sets them; users by name resolve through the image's /etc/passwd and
//! /etc/group; `manifest inspect` shows where each value came from; the
//! provenance record names every source by digest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

use std::path::Path;
use std::process::Command;

use cairn_format::digest::Digest;
use serde_json::{json, Value};

fn run(args: &[&str], dir: &Path) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).arg("--quiet").current_dir(dir).output().unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn json(args: &[&str], dir: &Path) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&run(&a, dir).unwrap()).unwrap()
}

fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn blob(dir: &Path, bytes: &[u8], media: &str) -> Value {
    let hex = Digest::of(bytes).to_string();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// `app.tar`: an OCI archive, tag `1.0`: a Python-style image whose config
/// runs `python3 -m app` as user `app` in /srv.
fn image(d: &Path) {
    let l = d.join("layout");
    let base = layer_tar(&[
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n"),
        ("etc/group", "root:x:0:\napp:x:1000:\naudio:x:29:app\n"),
        ("usr/bin/python3", "#!/bin/sh\n"),
    ]);
    let app = layer_tar(&[("srv/app/__main__.py", "print('hi')\n")]);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["python3"], "Cmd": ["-m", "app"], "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"],
                   "WorkingDir": "/srv", "User": "app"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", Digest::of(&base)), format!("sha256:{}", Digest::of(&app))]},
    });
    let c = blob(&l, &serde_json::to_vec(&config).unwrap(), "application/vnd.oci.image.config.v1+json");
    let mut l1 = blob(&l, &base, "application/vnd.oci.image.layer.v1.tar");
    l1["annotations"] = json!({"org.example.layer": "base"});
    let l2 = blob(&l, &app, "application/vnd.oci.image.layer.v1.tar");
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": c, "layers": [l1, l2],
                          "annotations": {"org.opencontainers.image.source": "https://example.invalid/app"}});
    let mut m = blob(&l, &serde_json::to_vec(&manifest).unwrap(), "application/vnd.oci.image.manifest.v1+json");
    m["annotations"] = json!({"org.opencontainers.image.ref.name": "1.0"});
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [m]});
    std::fs::write(l.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &l).unwrap();
    std::fs::write(d.join("app.tar"), b.into_inner().unwrap()).unwrap();
}

const APPLIANCE: &str = r#"appliance = "py"
version = 1
compatible = "cairn-test"

[[layer]]
name = "app"
source = "oci-archive:app.tar:1.0"

[[layer]]
name = "conf"
source = "conf"

# Everything from the image.
[[container]]
name = "plain"
layers = ["app", "conf"]

# The file's argv, env and user win; env entries merge over the image's.
[[container]]
name = "custom"
layers = ["app"]
argv = ["/usr/bin/python3", "-c", "pass"]
env = ["LANG=de_DE.UTF-8", "DEBUG=1"]
user = "root"

# No image: as before, argv required.
[[container]]
name = "static"
layers = ["conf"]
argv = ["/bin/x"]
uid = 7
gid = 8
"#;

#[test]
fn containers_take_the_image_config_unless_the_file_sets_it() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    image(d);
    std::fs::create_dir_all(d.join("conf/etc")).unwrap();
    std::fs::write(d.join("conf/etc/app.conf"), "x\n").unwrap();
    std::fs::write(d.join("appliance.toml"), APPLIANCE).unwrap();
    run(&["key", "generate", "--out", "k"], d).unwrap();
    let b = json(&["manifest", "build", "appliance.toml", "--key", "k", "--out", "out/m.cairn"], d);
    assert_eq!(b["provenance"], "out/m.cairn.intoto.json");

    let i = json(&["manifest", "inspect", "out/m.cairn"], d);
    let c = |n: usize| i["appliance"]["container"][n].clone();
    assert_eq!(c(0)["name"], "plain");
    assert_eq!(c(0)["argv"], json!(["/usr/bin/python3", "-m", "app"]), "argv[0] found on the image's PATH");
    assert_eq!(c(0)["env"], json!(["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"]));
    assert_eq!(c(0)["cwd"], "/srv");
    assert_eq!(
        (c(0)["uid"].clone(), c(0)["gid"].clone(), c(0)["groups"].clone()),
        (json!(1000), json!(1000), json!([29]))
    );
    assert_eq!(c(1)["argv"], json!(["/usr/bin/python3", "-c", "pass"]));
    assert_eq!(c(1)["env"], json!(["PATH=/usr/local/bin:/usr/bin", "LANG=de_DE.UTF-8", "DEBUG=1"]));
    assert_eq!(c(1)["cwd"], "/srv");
    assert_eq!((c(1)["uid"].clone(), c(1)["gid"].clone()), (json!(0), json!(0)));
    assert_eq!(c(2)["env"], json!(["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]));
    assert_eq!((c(2)["uid"].clone(), c(2)["gid"].clone(), c(2)["cwd"].clone()), (json!(7), json!(8), json!("/")));

    let o = &i["origins"];
    let origin = |n: usize, k: &str| o[n][k].as_str().unwrap().to_owned();
    assert_eq!([origin(0, "argv"), origin(0, "env"), origin(0, "cwd"), origin(0, "user")], ["image"; 4]);
    assert_eq!(o[0]["image_layer"], "app");
    assert_eq!(
        [origin(1, "argv"), origin(1, "env"), origin(1, "cwd"), origin(1, "user")],
        ["appliance", "image-and-appliance", "image", "appliance"]
    );
    assert_eq!(
        [origin(2, "argv"), origin(2, "env"), origin(2, "cwd"), origin(2, "user")],
        ["appliance", "default", "default", "appliance"]
    );

    // The text shows it as comments, and still compiles to the same manifest.
    let text = run(&["manifest", "inspect", "out/m.cairn"], d).unwrap();
    assert!(text.contains("argv = [\"/usr/bin/python3\", \"-m\", \"app\"]  # from image config (layer app)"), "{text}");
    assert!(text.contains("uid = 7  # from appliance file"), "{text}");
    std::fs::write(d.join("again.toml"), &text).unwrap();
    std::fs::create_dir_all(d.join("again")).unwrap();
    run(&["manifest", "build", "again.toml", "--key", "k", "--out", "again/m.cairn", "--layers", "out/layers"], d)
        .unwrap();
    assert_eq!(std::fs::read(d.join("again/m.cairn")).unwrap(), std::fs::read(d.join("out/m.cairn")).unwrap());

    // The provenance record: subjects by digest, sources with their digests.
    let p: Value = serde_json::from_slice(&std::fs::read(d.join("out/m.cairn.intoto.json")).unwrap()).unwrap();
    assert_eq!(p["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(p["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(format!("sha256:{}", p["subject"][0]["digest"]["sha256"].as_str().unwrap()), i["payload_digest"]);
    let layer_digest = i["appliance"]["layer"][0]["digest"].as_str().unwrap();
    assert_eq!(p["subject"][1]["name"], "layer/app");
    assert_eq!(format!("sha256:{}", p["subject"][1]["digest"]["sha256"].as_str().unwrap()), layer_digest);
    let deps = p["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let dep = |n: &str| deps.iter().find(|d| d["name"] == n).cloned().unwrap_or_else(|| panic!("no {n}: {deps:?}"));
    assert_eq!(dep("layer/app/source")["uri"], "oci-archive:app.tar:1.0");
    assert_eq!(
        dep("layer/app/source")["annotations"]["org.opencontainers.image.source"],
        "https://example.invalid/app"
    );
    let il = dep("layer/app/image-layer/1");
    assert_eq!(il["annotations"]["org.example.layer"], "base");
    assert!(il["annotations"]["cairn.diff_id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(dep("layer/conf/source")["uri"], "conf");
    // Signing elsewhere carries the record along.
    run(&["manifest", "sign", "out/m.cairn", "--key", "k", "--out", "signed.cairn"], d).unwrap();
    assert!(d.join("signed.cairn.intoto.json").is_file());
}

#[test]
fn missing_names_and_programs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    image(d);
    run(&["key", "generate", "--out", "k"], d).unwrap();
    let head = "appliance = \"py\"\nversion = 1\ncompatible = \"cairn-test\"\n\n[[layer]]\nname = \"app\"\n\
                source = \"oci-archive:app.tar:1.0\"\n\n[[container]]\nname = \"c\"\nlayers = [\"app\"]\n";
    let cases = [
        ("user = \"ghost\"\n", "user: user \"ghost\" is not in the image's /etc/passwd"),
        ("user = \"app:wheel\"\n", "group \"wheel\" is not in the image's /etc/group"),
        ("user = \"app\"\nuid = 3\n", "give user or uid/gid, not both"),
    ];
    for (extra, want) in cases {
        std::fs::write(d.join("a.toml"), format!("{head}{extra}")).unwrap();
        let e = run(&["manifest", "build", "a.toml", "--key", "k", "--out", "m.cairn"], d).unwrap_err();
        assert!(e.contains(want) && e.contains("container[0] (c)"), "{extra}: {e}");
        assert!(!d.join("m.cairn").exists());
    }
    // Without an image, argv is required, with a reason.
    std::fs::create_dir_all(d.join("conf")).unwrap();
    std::fs::write(d.join("b.toml"), head.replace("oci-archive:app.tar:1.0", "conf")).unwrap();
    let e = run(&["manifest", "build", "b.toml", "--key", "k", "--out", "m.cairn"], d).unwrap_err();
    assert!(e.contains("argv: missing"), "{e}");
}
