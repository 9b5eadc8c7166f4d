//! `init-semantics`: cairn's namespace init behaves like tini: exit codes
//! pass through, signals are forwarded once each, orphans are reaped, the
//! leftovers are stopped after the entrypoint exits, 126/127 for bad
//! entrypoints, a clean signal state for the entrypoint.

use anyhow::{ensure, Context, Result};

use crate::Ctx;

/// Catchable signals: 1 to 31 without KILL, STOP and CHLD.
const SIGNALS: [u32; 28] =
    [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "init-semantics")?;
    let c = &run.console;
    let code = |name: &str| -> Result<String> {
        let e = c.expect("container.exited", &[("name", name)])?;
        Ok(e.get("code").unwrap_or("").to_owned())
    };
    for (name, want) in
        [("code-0", "0"), ("code-1", "1"), ("code-42", "42"), ("code-255", "255"), ("sig-9", "137"), ("sig-15", "143")]
    {
        ensure!(code(name)? == want, "{name} exited {}, want {want}", code(name)?);
    }
    ensure!(code("missing")? == "127", "missing entrypoint gave {}", code("missing")?);
    c.expect("container.exec-failed", &[("name", "missing"), ("path", "/bin/no-such-program"), ("error", "ENOENT")])?;
    ensure!(code("noexec")? == "126", "non-executable entrypoint gave {}", code("noexec")?);
    c.expect("container.exec-failed", &[("name", "noexec"), ("path", "/etc/cairn-layer")])?;

    // Every catchable signal reaches the entrypoint exactly once.
    for sig in SIGNALS {
        let s = sig.to_string();
        let got = c.all("got-signal", &[("name", "sigs"), ("sig", &s), ("role", "main")]);
        ensure!(got.len() == 1, "signal {sig} reached the entrypoint {} times", got.len());
    }
    c.expect("sigcount-done", &[("name", "sigs")])?;
    // With signal_group, the whole process group gets it.
    c.expect("got-signal", &[("name", "group"), ("sig", "10"), ("role", "main")])?;
    c.expect("got-signal", &[("name", "group"), ("sig", "10"), ("role", "child")])?;

    // Clean signal state, own session.
    let st = c.expect("sigstate", &[("name", "state")])?;
    ensure!(
        st.get("blocked").is_some_and(|b| b.trim_start_matches('0').is_empty()),
        "signals blocked: {:?}",
        st.fields
    );
    ensure!(
        st.get("ignored").is_some_and(|b| b.trim_start_matches('0').is_empty()),
        "signals ignored: {:?}",
        st.fields
    );
    ensure!(st.get("sid") == st.get("pid") && st.get("pgid") == st.get("pid"), "not a session leader: {:?}", st.fields);

    // Leftovers get the stop signal, then SIGKILL after the grace period.
    let exiting = c.expect("entrypoint-exiting", &[("name", "leaver")])?;
    c.expect("child-term", &[("name", "leaver"), ("role", "a")]).context("child a never got SIGTERM")?;
    let e = c.expect("container.exited", &[("name", "leaver")])?;
    ensure!(e.get("code") == Some("0"), "leaver exit {:?}, want the entrypoint's 0", e.fields);
    let t = |l: &crate::console::Line| -> f64 { l.get("t").and_then(|t| t.parse().ok()).unwrap_or(0.0) };
    let started = c.expect("container.started", &[("name", "leaver")])?;
    // The entrypoint exits about 1 s after start; the container ends 1.5 s
    // (the grace period) after that, when the child ignoring SIGTERM is killed.
    ensure!(exiting.index < e.index, "container ended before its entrypoint");
    ensure!(
        t(e) - t(started) >= 2.3,
        "leaver ended {:.2}s after start: the grace period was not waited",
        t(e) - t(started)
    );

    // A console: the pty is stdio and the controlling terminal, the
    // entrypoint's group is in the foreground (like tini), ^C typed on the
    // terminal reaches it once, and its output reaches the console prefixed.
    c.expect("container.console", &[("name", "tty")])?;
    let tty = c.expect("tty", &[("name", "tty")])?;
    ensure!(tty.get("stdio") == Some("111"), "stdio is not the terminal: {:?}", tty.fields);
    ensure!(tty.num("tty_nr").is_some_and(|n| n != 0), "no controlling terminal: {:?}", tty.fields);
    ensure!(
        tty.get("fg") == tty.get("pgrp") && tty.get("pgrp") == tty.get("pid"),
        "the entrypoint's group is not the foreground group: {:?}",
        tty.fields
    );
    ensure!(tty.get("sid") == Some("1"), "not in the namespace init's session: {:?}", tty.fields);
    let raw = c.raw.get(tty.index).map_or("", String::as_str);
    ensure!(raw.contains("[tty] payload name=tty event=tty "), "console line not prefixed: {raw:?}");
    c.expect("tty-sigint", &[("name", "tty"), ("sti", "ok"), ("sigints", "1")])?;
    let e = c.expect("container.exited", &[("name", "tty")])?;
    ensure!(e.get("code") == Some("0"), "tty exit {:?}", e.fields);
    c.expect("container.console-closed", &[("name", "tty")])?;
    Ok(())
}
