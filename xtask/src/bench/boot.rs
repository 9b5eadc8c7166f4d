//! Boot time of the demo appliance (the `cargo xtask bench` of before):
//! kernel start to `/init`, `/init` to every container started, from the
//! boot events' guest timestamps.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_qemu_tests::{qemu, Artifacts};

use super::report::{Group, Row};

/// Boot the demo disk `runs` times; one group of three rows (seconds).
pub fn demo(b: &'static Board, art: &Artifacts, disk: &Path, runs: usize, log_dir: &Path) -> Result<Group> {
    let (mut to_init, mut to_started, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs.max(1) {
        let cmd = qemu::command(b, &art.boot, disk, "");
        let log = log_dir.join(format!("boot-demo-{i}.log"));
        let run =
            qemu::capture(cmd, &log, Duration::from_secs(180), &|c| c.first("boot.containers-started", &[]).is_some())?;
        let ev = run
            .console
            .first("boot.containers-started", &[])
            .with_context(|| format!("the demo never started its containers (console: {})", log.display()))?;
        let t_start = run.console.first("boot.start", &[]).and_then(|l| l.get("t")?.parse::<f64>().ok()).unwrap_or(0.0);
        let t: f64 = ev.get("t").and_then(|t| t.parse().ok()).unwrap_or(0.0);
        eprintln!(
            "xtask: bench boot run {i}: kernel->init {t_start:.3}s, init->containers {:.3}s, total {t:.3}s (host wall {:.1}s)",
            t - t_start,
            run.elapsed.as_secs_f64()
        );
        to_init.push(t_start);
        to_started.push(t - t_start);
        total.push(t);
    }
    Ok(Group {
        name: "boot-demo".into(),
        title: "demo appliance (three containers): guest time from kernel start, from the boot events".into(),
        unit: "s".into(),
        rows: vec![
            Row::new("kernel -> /init", to_init),
            Row::new("/init -> all started", to_started),
            Row::new("total", total),
        ],
        subject: None,
        notes: vec![],
    })
}
