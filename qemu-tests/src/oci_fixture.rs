//! An OCI image built by the tests: three layers with owners, a hard link,
//! a FIFO, whiteouts and an opaque directory, written as an OCI image
//! layout in a tar (the form `skopeo copy ... oci-archive:` and `docker
//! save` from Docker 25 produce). What Docker shows when it runs the image
//! is [`expected`].

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// One member of a layer.
enum Member<'a> {
    Dir(&'a str, u32),
    File { path: &'a str, body: &'a str, mode: u32, uid: u64, gid: u64 },
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
}

use Member::*;

fn file(path: &'static str, body: &'static str) -> Member<'static> {
    File { path, body, mode: 0o644, uid: 0, gid: 0 }
}

fn layers() -> Vec<Vec<Member<'static>>> {
    vec![
        vec![
            Dir("etc", 0o755),
            file("etc/os-release", "base"),
            file("etc/keep", "keep"),
            file("etc/remove-me", "gone"),
            Dir("opt/app", 0o755),
            file("opt/app/old1", "old1"),
            Dir("opt/app/sub", 0o700),
            file("opt/app/sub/old2", "old2"),
            Dir("data", 0o755),
            file("data/hl-a", "hard"),
            HardLink("data/hl-b", "data/hl-a"),
            Symlink("link", "etc/keep"),
            Dir("srv", 0o755),
            File { path: "srv/owned", body: "mine", mode: 0o640, uid: 1234, gid: 5678 },
            Fifo("srv/fifo"),
        ],
        vec![
            file("etc/.wh.remove-me", ""),
            file("opt/app/.wh..wh..opq", ""),
            file("opt/app/new", "new"),
            file("etc/os-release", "layer2"),
            file("data/added", "added"),
        ],
        vec![
            file(".wh.link", ""),
            file("data/.wh.added", ""),
            Dir("newdir", 0o750),
            File { path: "newdir/file", body: "three", mode: 0o4755, uid: 0, gid: 0 },
        ],
    ]
}

/// What a container stacked from the image sees under the checked paths
/// (`path kind mode uid gid content`), sorted; Docker's semantics.
pub fn expected() -> Vec<String> {
    [
        "/data d 755 0 0 -",
        "/data/hl-a f 644 0 0 hard",
        "/data/hl-b f 644 0 0 hard",
        "/etc d 755 0 0 -",
        "/etc/keep f 644 0 0 keep",
        "/etc/os-release f 644 0 0 layer2",
        "/newdir d 750 0 0 -",
        "/newdir/file f 4755 0 0 three",
        "/opt/app d 755 0 0 -",
        "/opt/app/new f 644 0 0 new",
        "/srv d 755 0 0 -",
        "/srv/fifo p 644 0 0 -",
        "/srv/owned f 640 1234 5678 mine",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The paths the container lists.
pub const CHECKED: [&str; 6] = ["/etc", "/opt/app", "/data", "/srv", "/newdir", "/link"];

fn layer_tar(members: &[Member<'_>]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match m {
            Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())?;
            }
            File { path, body, mode, uid, gid } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_bytes())?;
            }
            Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
            HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
            Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// The image's run configuration: what a container built from the image
/// with no `argv`, `env`, `cwd` or `uid` in its appliance entry runs with
/// (Docker's defaults).
pub const IMAGE_CONFIG: &str = r#"{"Entrypoint":["/bin/cairn-payload"],"Cmd":["inspect"],"Env":["PATH=/bin","CAIRN_IMAGE_ENV=from-image-config"],"WorkingDir":"/data","User":"1000:1000"}"#;

/// Write the image as an OCI layout tar to `out`. The middle layer is
/// gzip-compressed, the others plain, as images mix them.
pub fn write_oci_archive(out: &Path, arch: &str) -> Result<()> {
    let tars = layers().iter().map(|m| layer_tar(m)).collect::<Result<Vec<_>>>()?;
    write_layout(out, arch, &tars, "{}")
}

/// An image whose one layer holds the payload program (`payload`, the
/// board's `cairn-payload`) and `/data`, with [`IMAGE_CONFIG`] as its run
/// configuration.
pub fn write_defaults_image(out: &Path, arch: &str, payload: &[u8]) -> Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "data/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(payload.len() as u64);
    b.append_data(&mut h, "bin/cairn-payload", payload)?;
    write_layout(out, arch, &[b.into_inner()?], IMAGE_CONFIG)
}

fn write_layout(out: &Path, arch: &str, tars: &[Vec<u8>], config: &str) -> Result<()> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, raw) in tars.iter().enumerate() {
        let raw = raw.clone();
        diff_ids.push(format!("\"sha256:{}\"", sha(&raw)));
        let (blob, media) = if i == 1 {
            (gzip(&raw)?, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (raw, "application/vnd.oci.image.layer.v1.tar")
        };
        let d = sha(&blob);
        descs.push(format!(r#"{{"mediaType":"{media}","digest":"sha256:{d}","size":{}}}"#, blob.len()));
        blobs.push((d, blob));
    }
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{config},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    )
    .into_bytes();
    let config_d = sha(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_d}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    let manifest_d = sha(&manifest);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_d}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#,
        manifest.len()
    )
    .into_bytes();
    blobs.push((config_d, config));
    blobs.push((manifest_d, manifest));

    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data)?;
        Ok(())
    };
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add(&mut b, "index.json", &index)?;
    for (d, blob) in &blobs {
        add(&mut b, &format!("blobs/sha256/{d}"), blob)?;
    }
    let bytes = b.into_inner()?;
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}
