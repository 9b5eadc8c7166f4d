//! `dev-console`: the development console (issue 14 item 6).
//!
//! - A development build (the xtask initramfs holds
//!   `/etc/cairn/development`) booted with `cairn.console=ctl` opens a
//!   `cairn-ctl shell` session on the serial console. The harness types on
//!   the console: `ps` (the table lists the running container), a bogus
//!   command (usage, `[exit 2]`, the shell goes on), `exec` of a command in
//!   the container (the session is the host: every permission), then
//!   `poweroff`, which powers the device off.
//! - The same switch in a production build (its initramfs without the
//!   marker) is refused (`console.refused`): no session, and a `poweroff`
//!   typed on the console does nothing.

use std::time::Duration;

use anyhow::{ensure, Result};
use cairn_build::bootkit::BootKit;
use cairn_build::{initramfs, kmod};

use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::qemu::BootOptions;
use crate::{Ctx, Ending};

pub fn run(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("dev-console")?;
    let (disk, _) = ctx.disk_with_cmdline(&app, "dev.img", "cairn.console=ctl")?;
    let typing = [
        // The container is running once it counts (the session opened on
        // the loop's first turn, before that).
        ("event=count n=2", "ps\n"),
        ("RESTARTS", "bogus words\n"),
        ("[exit 2]", "exec app -- /bin/cairn-payload whoami console\n"),
        ("event=whoami label=console", "poweroff\n"),
    ];
    let opts = BootOptions { typing: &typing, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "dev.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let session = c.expect("console.session", &[])?;
    ensure!(session.get("client") == Some("/bin/cairn-ctl"), "session {:?}", session.fields);
    let ps = c.expect("control.request", &[("caller", "host"), ("request", "ps")])?;
    ensure!(ps.index > session.index, "ps before the session");
    let table = c.raw_lines().iter().any(|l| l.contains("app") && l.contains("running") && !l.contains("event="));
    ensure!(table, "no ps table row for the running container");
    ensure!(c.contains("usage: cairn-ctl"), "the bogus command printed no usage");
    let exec = c.all("control.request", &[("caller", "host"), ("reply", "ok")]);
    ensure!(
        exec.iter().any(|l| l.get("request").is_some_and(|r| r.starts_with("exec app -- "))),
        "no exec from the console was served"
    );
    c.expect("whoami", &[("label", "console")])?;
    c.expect("control.request", &[("caller", "host"), ("request", "poweroff")])?;
    c.expect("shutdown.complete", &[("kind", "poweroff")])?;

    // A production build: the switch is refused, the console reads nothing.
    let (version, dir) = kmod::find_module_dir(&ctx.art.kernel_tree)?;
    let modules = kmod::resolve_modules(&dir, &version, &ctx.board.modules())?;
    let on_demand = kmod::OnDemand::resolve(&dir, &version, &modules, kmod::Wanted::of(ctx.board))?;
    let trust = initramfs::Trust::new(vec![ctx.art.key.verifying_key().to_bytes()], app.manifest.compatible.clone())?;
    let kit = BootKit {
        initramfs: initramfs::build_with_on_demand(&ctx.art.init, &modules, &on_demand, &trust)?,
        cmdline: format!("{} cairn.console=ctl", ctx.art.kit.cmdline),
        ..ctx.art.kit.clone()
    };
    let esp = kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    let (disk, _) = ctx.disk_with_esp(&app, "product.img", &esp)?;
    let typing = [("event=boot.containers-started", "poweroff\n")];
    let opts = BootOptions { typing: &typing, ..BootOptions::default() };
    let started = std::cell::Cell::new(None);
    let quiet_after = |c: &crate::console::Console| {
        if c.first("boot.containers-started", &[]).is_some() && started.get().is_none() {
            started.set(Some(std::time::Instant::now()));
        }
        started.get().is_some_and(|t| t.elapsed() > Duration::from_secs(5))
    };
    let run = ctx.boot_with(&disk, &opts, "product.log", BOOT_TIMEOUT, &quiet_after)?;
    no_panic(&run)?;
    let c = &run.console;
    ensure!(run.ending == Ending::Stopped, "the production build stopped by itself: {:?}", run.ending);
    let refused = c.expect("console.refused", &[("switch", "cairn.console=ctl")])?;
    ensure!(
        refused.get("reason").is_some_and(|r| r.starts_with("not a development build")),
        "refused for {:?}",
        refused.fields
    );
    ensure!(c.first("console.session", &[]).is_none(), "a production build opened a console session");
    ensure!(c.first("control.request", &[]).is_none(), "the typed poweroff reached the control socket");
    ensure!(c.first("shutdown.start", &[]).is_none(), "the typed poweroff powered the device off");
    Ok(())
}
