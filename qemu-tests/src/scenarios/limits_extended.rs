//! `limits-extended`: tmpfs caps, io.max, rlimits, read-only rootfs, and the
//! cgroup controls beyond the foundation, each shown to hold.

use anyhow::{ensure, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "limits-extended")?;
    let c = &run.console;

    let fill = c.expect("fill-tmpfs", &[("name", "filler")])?;
    let kib = fill.num("wrote_kib").unwrap_or(-1);
    ensure!(
        fill.get("err") == Some("ENOSPC") && (1..=2048).contains(&kib),
        "scratch cap of 2M not enforced: {:?}",
        fill.fields
    );
    let shm = c.expect("fill-tmpfs", &[("name", "shm-filler")])?;
    let kib = shm.num("wrote_kib").unwrap_or(-1);
    ensure!(
        shm.get("err") == Some("ENOSPC") && (0..=512).contains(&kib),
        "/dev/shm cap of 512K not enforced: {:?}",
        shm.fields
    );
    let ro = c.expect("fill-tmpfs", &[("name", "readonly")])?;
    ensure!(
        ro.get("err") == Some("EROFS") && ro.num("wrote_kib") == Some(0),
        "read-only rootfs was written: {:?}",
        ro.fields
    );

    let secs = |name: &str| -> Result<f64> {
        let r = c.expect("read-rate", &[("name", name)])?;
        r.get("seconds").and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("{name}: {:?}", r.fields))
    };
    let (slow, fast) = (secs("slow-reader")?, secs("fast-reader")?);
    ensure!(slow >= 2.5, "3 MiB at io.max rbps=1M took {slow:.2}s");
    ensure!(fast < slow / 2.0, "unthrottled read took {fast:.2}s, throttled {slow:.2}s");

    let files = c.expect("open-files", &[("name", "files")])?;
    ensure!(
        files.get("err") == Some("EMFILE") && files.num("opened").unwrap_or(99) < 32,
        "nofile=32 not enforced: {:?}",
        files.fields
    );
    let rl = c.expect("rlimits", &[("name", "rlimits")])?;
    ensure!(
        rl.get("nproc") == Some("64/128") && rl.get("core") == Some("0/0") && rl.get("nofile") == Some("100/200"),
        "rlimits {:?}",
        rl.fields
    );

    for (file, want) in
        [("memory.high", "50331648"), ("memory.swap.max", "0"), ("cpu.weight", "42"), ("cpuset.cpus", "0")]
    {
        let path = format!("/sys/fs/cgroup/{file}");
        let l = c.expect("cat", &[("name", "tuned"), ("path", &path)])?;
        ensure!(l.get("value") == Some(want), "{file} is {:?}, want {want}", l.get("value"));
    }
    Ok(())
}
