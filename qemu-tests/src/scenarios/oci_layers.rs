//! `oci-layers`: an OCI image built by the test (three layers, whiteouts,
//! an opaque directory, owners, a hard link, a FIFO) is imported by the
//! same library calls as `cairn layer build`, once as separate layers and
//! once flattened. On the device, the overlay of the separate layers and
//! the flattened layer both show exactly the tree Docker gives. A third
//! container names an image (the payload program, `/data` and a run
//! configuration) as its layer's `source` and gives no
//! `argv`, `env`, `cwd` or `uid`: the image's Entrypoint + Cmd, Env,
//! WorkingDir and User take effect, as Docker runs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};
use cairn_build::assemble;
use cairn_build::layer::{self, LayerOptions};

use crate::console::Console;
use crate::oci_fixture::{self, CHECKED};
use crate::Ctx;

/// A container's listing: `path kind mode uid gid content` lines (sorted),
/// and path → (inode number, link count).
type Listing = (Vec<String>, BTreeMap<String, (String, String)>);

/// The listing a container printed.
fn listing(c: &Console, name: &str) -> Result<Listing> {
    c.expect("tree-done", &[("name", name)]).with_context(|| format!("{name} never finished its listing"))?;
    let mut lines = Vec::new();
    let mut inodes = BTreeMap::new();
    for e in c.all("tree-entry", &[("name", name)]) {
        let f = |k: &str| e.get(k).unwrap_or("").to_owned();
        lines.push(format!("{} {} {} {} {} {}", f("path"), f("kind"), f("mode"), f("uid"), f("gid"), {
            let content = f("content");
            if content.is_empty() {
                "-".to_owned()
            } else {
                content
            }
        }));
        inodes.insert(f("path"), (f("ino"), f("nlink")));
    }
    lines.sort();
    Ok((lines, inodes))
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let arch = if ctx.board.rust_target.starts_with("aarch64") { "arm64" } else { "amd64" };
    let archive = ctx.dir.join("image.oci.tar");
    oci_fixture::write_oci_archive(&archive, arch)?;

    let separate = layer::build(&archive, &ctx.dir.join("oci"), &LayerOptions::default(), &mut |_| {})?;
    ensure!(separate.len() == 3, "the image has 3 layers, import gave {}", separate.len());
    let flat_path = ctx.dir.join("flat.squashfs");
    let flat =
        layer::build(&archive, &flat_path, &LayerOptions { flatten: true, ..LayerOptions::default() }, &mut |_| {})?;
    ensure!(flat.len() == 1, "--flatten gave {} layers", flat.len());
    // Reproducible: importing again gives the same digests.
    let again = layer::build(&archive, &ctx.dir.join("oci-again"), &LayerOptions::default(), &mut |_| {})?;
    for (a, b) in separate.iter().zip(&again) {
        ensure!(a.digest == b.digest, "layer {} differs between two imports", a.name);
    }

    // The appliance: the payload layer below the image's layers.
    let mut toml = String::from("appliance = \"oci-layers\"\nversion = 1\ncompatible = \"cairn-qemu-dev\"\n\n");
    toml.push_str("[[layer]]\nname = \"tools\"\nsource = \"build:payload\"\n\n");
    let mut names = Vec::new();
    for (i, l) in separate.iter().enumerate() {
        let name = format!("oci{i}");
        let _ = writeln!(toml, "[[layer]]\nname = \"{name}\"\nfile = \"oci/{}.squashfs\"\n", l.name);
        names.push(format!("\"{name}\""));
    }
    toml.push_str("[[layer]]\nname = \"flat\"\nfile = \"flat.squashfs\"\n\n");
    let argv: Vec<String> =
        ["/bin/cairn-payload", "tree"].iter().chain(CHECKED.iter()).map(|s| format!("\"{s}\"")).collect();
    let _ = writeln!(
        toml,
        "[[container]]\nname = \"stacked\"\nlayers = [\"tools\", {}]\nargv = [{}]\nrestart = {{ policy = \"never\" }}\n",
        names.join(", "),
        argv.join(", ")
    );
    let _ = writeln!(
        toml,
        "[[container]]\nname = \"flat\"\nlayers = [\"tools\", \"flat\"]\nargv = [{}]\nrestart = {{ policy = \"never\" }}\n",
        argv.join(", ")
    );
    let payload = std::fs::read(ctx.art.payload_root.join("bin/cairn-payload"))?;
    oci_fixture::write_defaults_image(&ctx.dir.join("defaults.oci.tar"), arch, &payload)?;
    toml.push_str("[[layer]]\nname = \"img\"\nsource = \"defaults.oci.tar\"\n\n");
    toml.push_str("[[container]]\nname = \"defaults\"\nlayers = [\"img\"]\nrestart = { policy = \"never\" }\n\n");
    toml.push_str(
        "[[container]]\nname = \"driver\"\nlayers = [\"tools\"]\nargv = [\"/bin/cairn-payload\", \"ctl\", \"--delay-ms\", \"4000\", \"poweroff\"]\ncontrol = true\nrestart = { policy = \"never\" }\n",
    );
    let path = ctx.dir.join("oci-layers.toml");
    std::fs::write(&path, toml)?;
    let sources = BTreeMap::from([("payload".to_owned(), ctx.art.payload_root.clone())]);
    let app = assemble::build_appliance(&path, &sources, &ctx.art.key, &ctx.dir.join("layers"))
        .with_context(|| format!("building {}", path.display()))?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let run = ctx.boot(&disk, super::BOOT_TIMEOUT, &super::until_exit)?;
    super::powered_off(&run)?;
    let c = &run.console;

    // The image's run configuration took effect (oci_fixture::IMAGE_CONFIG).
    let ins = c.expect("inspect", &[("name", "defaults")]).context("the image-defaults container never ran inspect")?;
    for (k, v) in [("uid", "1000"), ("gid", "1000"), ("cwd", "/data"), ("image_env", "from-image-config")] {
        ensure!(ins.get(k) == Some(v), "image defaults: {k} is {:?}, the image config says {v}", ins.get(k));
    }

    let want = oci_fixture::expected();
    for name in ["stacked", "flat"] {
        let (got, inodes) = listing(c, name)?;
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        ensure!(missing.is_empty() && extra.is_empty(), "{name}: missing {missing:?}, unexpected {extra:?}");
        // The whited-out symlink is gone.
        let err = c.expect("tree-error", &[("name", name), ("path", "/link")])?;
        ensure!(err.get("error").is_some_and(|e| e.contains("No_such_file")), "{name}: /link: {:?}", err.fields);
        // The hard link pair is one inode with two names.
        let (a, b) = (inodes.get("/data/hl-a"), inodes.get("/data/hl-b"));
        ensure!(a.is_some() && a == b, "{name}: hl-a {a:?} and hl-b {b:?} are not one inode");
        ensure!(a.is_some_and(|(_, n)| n == "2"), "{name}: hard link count {a:?}, want 2");
    }
    Ok(())
}
