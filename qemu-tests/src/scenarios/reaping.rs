//! `reaping`: 100 orphans leave no zombie; SIGTERM sent to the container
//! reaches the entrypoint; exit 42 is recorded as 42, SIGKILL as 137.

use anyhow::{ensure, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "reaping")?;
    let c = &run.console;
    let o = c.expect("orphans", &[("name", "reaper")])?;
    ensure!(o.get("created") == Some("100"), "created {:?} orphans", o.get("created"));
    ensure!(o.get("zombies") == Some("0"), "{:?} zombies left in the namespace", o.get("zombies"));
    c.expect("container.signalled", &[("name", "reaper"), ("signal", "15")])?;
    c.expect("got-signal", &[("name", "reaper"), ("sig", "15")])?;
    let e = c.expect("container.exited", &[("name", "reaper")])?;
    ensure!(e.get("code") == Some("42"), "reaper exit {:?}, want 42", e.fields);
    let k = c.expect("container.exited", &[("name", "killer")])?;
    ensure!(k.get("code") == Some("137"), "killer exit {:?}, want 137", k.fields);
    Ok(())
}
