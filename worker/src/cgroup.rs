//! Per-job cgroups (through cgroups-rs), on cgroup v1 and v2.
//!
//! Each job gets `PARENT/job-<id>-<token>` with a CPU quota from its cpu
//! request, a hard memory limit from its memory request (swap included on
//! v1, so the limit cannot be dodged by swapping), and a pids limit. FFmpeg
//! enters the cgroup before it executes: the worker starts itself as a
//! trampoline (`ffleet-worker confine`) that joins the cgroup and then
//! execs FFmpeg, so no instruction of FFmpeg runs unconfined.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue, hierarchies};
use ffleet_core::Resources;

/// The CFS period: quotas are expressed per 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

fn controllers(v2: bool) -> Vec<String> {
    let names: &[&str] = if v2 {
        &["cpu", "memory", "pids"]
    } else {
        &["cpu", "cpuacct", "memory", "pids"]
    };
    names.iter().map(|s| s.to_string()).collect()
}

fn load(rel_path: &str) -> Cgroup {
    let hierarchy = hierarchies::auto();
    let v2 = hierarchy.v2();
    Cgroup::load_with_specified_controllers(hierarchy, rel_path, controllers(v2))
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Whether the worker confines jobs in cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupMode {
    /// Use cgroups when the host allows it; otherwise run unconfined, saying
    /// why in the log.
    #[default]
    Auto,
    /// Refuse to start without working cgroups.
    Required,
    /// Never use cgroups.
    Off,
}

/// The worker's view of cgroups: where job cgroups live and how they are
/// limited.
#[derive(Debug, Clone)]
pub struct Cgroups {
    parent: String,
    pids_limit: i64,
    v2: bool,
}

/// What a job's processes used, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_time_ns: u64,
    pub peak_memory_bytes: u64,
    pub oom_kills: u64,
    /// Forks refused by the pids limit.
    pub pids_refused: u64,
}

impl Cgroups {
    /// Creates (or finds) the parent cgroup. An error says why cgroups are
    /// unusable here (no hierarchy mounted, no permission).
    pub fn open(parent: &str, pids_limit: u32) -> Result<Cgroups, String> {
        let hierarchy = hierarchies::auto();
        let v2 = hierarchy.v2();
        Cgroup::new_with_specified_controllers(hierarchy, parent, Some(controllers(v2)))
            .map_err(|e| err(&format!("creating cgroup {parent}"), e))?;
        let cgroups = Cgroups {
            parent: parent.trim_matches('/').to_owned(),
            pids_limit: pids_limit as i64,
            v2,
        };
        // Prove it works: a child can be made, limited and removed.
        let probe = cgroups.create("probe", &Resources::new(1000, 64 << 20, 1))?;
        probe.remove()?;
        Ok(cgroups)
    }

    pub fn version(&self) -> &'static str {
        if self.v2 { "v2" } else { "v1" }
    }

    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// Creates a job's cgroup with limits from its reservation.
    pub fn create(&self, name: &str, limits: &Resources) -> Result<JobCgroup, String> {
        let rel_path = format!("{}/{name}", self.parent);
        let cgroup = Cgroup::new_with_specified_controllers(
            hierarchies::auto(),
            &rel_path,
            Some(controllers(self.v2)),
        )
        .map_err(|e| err(&format!("creating cgroup {rel_path}"), e))?;
        let job = JobCgroup { cgroup, rel_path };
        if let Err(e) = job.limit(limits, self.pids_limit, self.v2) {
            let _ = job.remove();
            return Err(e);
        }
        Ok(job)
    }

    /// Kills whatever a previous life of this worker left running in job
    /// cgroups, and removes them. Returns their names.
    pub fn remove_leftovers(&self) -> Vec<String> {
        let parent = load(&self.parent);
        let Some(dir) = parent
            .subsystems()
            .first()
            .map(|s| s.to_controller().path().to_path_buf())
        else {
            return vec![];
        };
        let mut removed = vec![];
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let job = JobCgroup {
                cgroup: load(&format!("{}/{name}", self.parent)),
                rel_path: format!("{}/{name}", self.parent),
            };
            match job.remove() {
                Ok(()) => removed.push(name),
                Err(e) => {
                    tracing::warn!(cgroup = %job.rel_path, error = %e, "cannot remove leftover cgroup")
                }
            }
        }
        removed
    }
}

/// One job's cgroup.
pub struct JobCgroup {
    cgroup: Cgroup,
    rel_path: String,
}

impl JobCgroup {
    /// The path relative to each hierarchy's root, for `confine`.
    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    fn limit(&self, limits: &Resources, pids_limit: i64, v2: bool) -> Result<(), String> {
        let memory: &MemController = self.cgroup.controller_of().ok_or("no memory controller")?;
        memory
            .set_limit(limits.memory_bytes as i64)
            .map_err(|e| err("setting memory limit", e))?;
        if !v2 && memory.path().join("memory.memsw.limit_in_bytes").exists() {
            memory
                .set_memswap_limit(limits.memory_bytes as i64)
                .map_err(|e| err("setting memory+swap limit", e))?;
        }
        let cpu: &CpuController = self.cgroup.controller_of().ok_or("no cpu controller")?;
        let quota = limits.cpu_millis as i64 * CPU_PERIOD_US as i64 / 1000;
        cpu.set_cfs_quota_and_period(Some(quota.max(1000)), Some(CPU_PERIOD_US))
            .map_err(|e| err("setting cpu quota", e))?;
        let pids: &PidController = self.cgroup.controller_of().ok_or("no pids controller")?;
        pids.set_pid_max(MaxValue::Value(pids_limit))
            .map_err(|e| err("setting pids limit", e))?;
        Ok(())
    }

    fn controller_dir<'a, T>(&'a self) -> Option<PathBuf>
    where
        &'a T: From<&'a cgroups_rs::fs::Subsystem>,
        T: Controller + cgroups_rs::fs::ControllIdentifier + 'a,
    {
        self.cgroup
            .controller_of::<T>()
            .map(|c| c.path().to_path_buf())
    }

    /// What the job's processes used so far, from the kernel's counters.
    pub fn usage(&self) -> Usage {
        let memory = self.controller_dir::<MemController>();
        let pids = self.controller_dir::<PidController>();
        if self.cgroup.v2() {
            let cpu = self.controller_dir::<CpuController>();
            Usage {
                cpu_time_ns: cpu
                    .and_then(|d| keyed(&d.join("cpu.stat"), "usage_usec"))
                    .unwrap_or(0)
                    * 1000,
                peak_memory_bytes: memory
                    .as_ref()
                    .and_then(|d| number(&d.join("memory.peak")))
                    .unwrap_or(0),
                oom_kills: memory
                    .and_then(|d| keyed(&d.join("memory.events"), "oom_kill"))
                    .unwrap_or(0),
                pids_refused: pids
                    .and_then(|d| keyed(&d.join("pids.events"), "max"))
                    .unwrap_or(0),
            }
        } else {
            let cpuacct = self.controller_dir::<CpuAcctController>();
            Usage {
                cpu_time_ns: cpuacct
                    .and_then(|d| number(&d.join("cpuacct.usage")))
                    .unwrap_or(0),
                peak_memory_bytes: memory
                    .as_ref()
                    .and_then(|d| number(&d.join("memory.max_usage_in_bytes")))
                    .unwrap_or(0),
                oom_kills: memory
                    .and_then(|d| keyed(&d.join("memory.oom_control"), "oom_kill"))
                    .unwrap_or(0),
                pids_refused: pids
                    .and_then(|d| keyed(&d.join("pids.events"), "max"))
                    .unwrap_or(0),
            }
        }
    }

    /// SIGKILLs every process in the cgroup now.
    fn kill_all(&self) {
        for pid in self.cgroup.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what remains and deletes the cgroup.
    pub fn remove(&self) -> Result<(), String> {
        // A killed process leaves the cgroup only once it is reaped, which
        // for an orphan of a crashed worker is up to init, and slow on a
        // loaded host; a process may also fork while we kill. Keep killing
        // and trying for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            self.kill_all();
            match self.cgroup.delete() {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(err(&format!("removing cgroup {}", self.rel_path), last))
    }
}

/// Moves the calling process into the cgroup at `rel_path` (used by the
/// `confine` trampoline before it execs FFmpeg).
pub fn join(rel_path: &str) -> Result<(), String> {
    let cgroup = load(rel_path);
    cgroup
        .add_task_by_tgid(CgroupPid::from(std::process::id() as u64))
        .map_err(|e| err(&format!("joining cgroup {rel_path}"), e))
}

fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key N` from a flat-keyed file such as memory.events or cpu.stat.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}
