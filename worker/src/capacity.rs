//! What this host offers: CPU, memory and scratch disk, detected and
//! overridable.

use std::path::Path;

use ffleet_core::Resources;

use crate::error::{Error, Result};

/// Host CPU (all cores), total memory, and the free space of the scratch
/// filesystem. Each can be overridden by the operator.
pub fn detect(
    work_dir: &Path,
    cpu: Option<u32>,
    memory: Option<u64>,
    disk: Option<u64>,
) -> Result<Resources> {
    let cpu = match cpu {
        Some(c) => c,
        None => {
            let cores =
                std::thread::available_parallelism().map_err(|e| Error::Capacity(e.to_string()))?;
            cores.get() as u32 * 1000
        }
    };
    let memory = match memory {
        Some(m) => m,
        None => total_memory()?,
    };
    let disk = match disk {
        Some(d) => d,
        None => free_disk(work_dir)?,
    };
    Ok(Resources::new(cpu, memory, disk))
}

fn total_memory() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| Error::Capacity("no MemTotal in /proc/meminfo".into()))
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub fn free_disk(dir: &Path) -> Result<u64> {
    disk_space(dir).map(|(free, _)| free)
}

/// (free for an unprivileged writer, total size) of the filesystem of `dir`.
pub fn disk_space(dir: &Path) -> Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Error::Capacity(format!("statvfs {}: {e}", dir.display())))?;
    let block = stat.fragment_size() as u64;
    Ok((
        stat.blocks_available() as u64 * block,
        stat.blocks() as u64 * block,
    ))
}

/// The first line of `ffmpeg -version`, e.g. `ffmpeg version 5.1.6-0+deb12u1`.
pub async fn ffmpeg_version(ffmpeg: &Path) -> Result<String> {
    let out = tokio::process::Command::new(ffmpeg)
        .arg("-version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Capacity(format!("running {} -version: {e}", ffmpeg.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").to_owned())
}
