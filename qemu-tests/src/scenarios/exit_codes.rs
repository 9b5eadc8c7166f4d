//! `exit-codes`: every exit code 0 to 255, and 128+S for death by every
//! signal S whose default action kills, pass through cairn's namespace init
//! to PID 1. Restarted containers pick their end by `CAIRN_RESTART_COUNT`.

use anyhow::{ensure, Result};

use crate::Ctx;

/// Signals 1 to 31 whose default action ends the process (as in
/// `appliances/exit-codes.toml`).
const KILLING: [i64; 23] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 29, 30, 31];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "exit-codes")?;
    let c = &run.console;
    let mut plans: Vec<(String, Vec<i64>)> = (0..8)
        .map(|k| {
            let (a, b) = (1 + 32 * k, (32 + 32 * k).min(255));
            (format!("seq-{k}"), (a..=b).chain([0]).collect())
        })
        .collect();
    plans.push(("seq-sig".into(), KILLING.iter().map(|s| 128 + s).chain([0]).collect()));
    let mut seen = [false; 256];
    for (name, want) in &plans {
        let n = name.as_str();
        let got: Vec<i64> =
            c.all("container.exited", &[("name", n)]).iter().map(|l| l.num("code").unwrap_or(-1)).collect();
        ensure!(&got == want, "{n} exited with {got:?}, want {want:?}");
        // The entrypoint saw its start count, 0 first, one more per restart.
        let counts: Vec<i64> =
            c.all("exit-seq", &[("name", n)]).iter().map(|l| l.num("restart_count").unwrap_or(-1)).collect();
        ensure!(counts == (0..want.len() as i64).collect::<Vec<_>>(), "{n}: CAIRN_RESTART_COUNT went {counts:?}");
        c.expect("container.stopped", &[("name", n), ("reason", "policy")])?;
        ensure!(c.first("still-alive", &[("name", n)]).is_none(), "{n}: a signal did not kill");
        for code in got {
            if let Some(s) = usize::try_from(code).ok().and_then(|i| seen.get_mut(i)) {
                *s = true;
            }
        }
    }
    for sig in KILLING {
        let action = format!("signal:{sig}");
        c.expect("exit-seq", &[("name", "seq-sig"), ("action", &action)])?;
    }
    let missing: Vec<usize> = (0..256).filter(|&i| !seen.get(i).copied().unwrap_or(false)).collect();
    ensure!(missing.is_empty(), "exit codes never seen: {missing:?}");
    ensure!(c.first("container.gave-up", &[]).is_none(), "a sequence ran out of restarts");
    Ok(())
}
