//! What the host really has free right now, whatever the ledger says.
//!
//! The ledger counts reservations; the host may disagree: another process
//! eats memory, the page cache is pinned, the scratch disk fills from
//! outside. Admission takes the tighter of the two, and the memory-floor
//! guard watches the real figure.
//!
//! Memory is cgroup-aware: inside a container (any enclosing cgroup with a
//! memory limit), what counts is that limit minus the cgroup's working set
//! (usage less inactive page cache, as the kubelet counts it), when that is
//! tighter than the host's `MemAvailable`.

use std::path::{Path, PathBuf};

/// Limits at or above this mean "no limit" (v1 writes a page-rounded
/// `i64::MAX`).
const UNLIMITED: u64 = 1 << 60;

/// The memory cgroup files of one hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoryFiles {
    limit: &'static str,
    usage: &'static str,
    /// The `memory.stat` key of inactive file cache (reclaimable).
    inactive_file: &'static str,
}

const V1: MemoryFiles = MemoryFiles {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    inactive_file: "total_inactive_file",
};

const V2: MemoryFiles = MemoryFiles {
    limit: "memory.max",
    usage: "memory.current",
    inactive_file: "inactive_file",
};

/// The worker's memory cgroup and its ancestors up to the mount: any of
/// them may hold the limit (a container's is usually a few levels up), and
/// its usage counts everything below it.
#[derive(Debug, Clone, PartialEq)]
struct MemoryCgroup {
    files: MemoryFiles,
    dirs: Vec<PathBuf>,
}

/// Reads the host's real free memory and disk.
#[derive(Debug, Clone)]
pub struct Host {
    scratch: PathBuf,
    memory_cgroup: Option<MemoryCgroup>,
}

impl Host {
    /// Finds the cgroup this process lives in; `scratch` is the directory
    /// whose filesystem holds job scratch space.
    pub fn detect(scratch: &Path) -> Host {
        let memory_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| locate_memory_cgroup(&text, Path::new("/sys/fs/cgroup")));
        Host {
            scratch: scratch.to_owned(),
            memory_cgroup,
        }
    }

    /// Bytes of memory this worker's jobs could still use: the host's
    /// `MemAvailable`, or the enclosing cgroup's headroom when tighter.
    /// `None` when nothing can be read (then only the ledger counts).
    pub fn available_memory(&self) -> Option<u64> {
        let host = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| meminfo_available(&text));
        let cgroup = self.memory_cgroup.as_ref().and_then(cgroup_headroom);
        match (host, cgroup) {
            (Some(h), Some(c)) => Some(h.min(c)),
            (h, c) => h.or(c),
        }
    }

    /// Bytes free on the scratch filesystem for an unprivileged writer.
    pub fn free_disk(&self) -> Option<u64> {
        crate::capacity::free_disk(&self.scratch).ok()
    }

    /// (free, total) bytes of the scratch filesystem.
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        crate::capacity::disk_space(&self.scratch).ok()
    }
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The worker's memory cgroup from `/proc/self/cgroup`, under `root`
/// (where the hierarchies are mounted).
fn locate_memory_cgroup(proc_cgroup: &str, root: &Path) -> Option<MemoryCgroup> {
    let mut v2_path = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup {
                files: V1,
                dirs: ancestors(&root.join("memory"), rel),
            });
        }
        if controllers.is_empty() {
            v2_path = Some(rel.to_owned());
        }
    }
    let rel = v2_path?;
    root.join("cgroup.controllers")
        .exists()
        .then(|| MemoryCgroup {
            files: V2,
            dirs: ancestors(root, &rel),
        })
}

/// `mount/rel`, then each parent up to `mount`. In a cgroup namespace the
/// path may not resolve; the mount's root is then our own cgroup.
fn ancestors(mount: &Path, rel: &str) -> Vec<PathBuf> {
    let mut dir = mount.join(rel);
    if !dir.exists() {
        dir = mount.to_owned();
    }
    let mut dirs = vec![];
    loop {
        dirs.push(dir.clone());
        if dir == mount || !dir.pop() {
            break;
        }
    }
    dirs
}

/// `key N` from a flat-keyed file such as memory.stat.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Limit minus working set, for the tightest limited cgroup; `None` when
/// no enclosing cgroup has a limit.
fn cgroup_headroom(cgroup: &MemoryCgroup) -> Option<u64> {
    let files = cgroup.files;
    cgroup
        .dirs
        .iter()
        .filter_map(|dir| {
            let limit = read(&dir.join(files.limit))?.trim().parse().ok()?;
            let usage = read(&dir.join(files.usage))?.trim().parse().ok()?;
            let stat = read(&dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_value(&stat, files.inactive_file).unwrap_or(0);
            headroom(limit, usage, inactive)
        })
        .min()
}

fn headroom(limit: u64, usage: u64, inactive_file: u64) -> Option<u64> {
    (limit < UNLIMITED).then(|| limit.saturating_sub(usage.saturating_sub(inactive_file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_available_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_available(text), Some(2048 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn headroom_counts_the_working_set_and_ignores_no_limit() {
        assert_eq!(headroom(1000, 700, 200), Some(500));
        assert_eq!(headroom(1000, 1200, 0), Some(0));
        assert_eq!(headroom(9223372036854771712, 5, 0), None);
    }

    #[test]
    fn finds_the_v1_memory_cgroup_and_the_v2_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mount = root.join("memory");
        std::fs::create_dir_all(mount.join("box/inner")).unwrap();
        let v1 = "5:devices:/\n4:memory:/box/inner\n0::/\n";
        let found = locate_memory_cgroup(v1, root).unwrap();
        assert_eq!(found.files, V1);
        assert_eq!(
            found.dirs,
            vec![mount.join("box/inner"), mount.join("box"), mount.clone()]
        );
        // The limit sits on the container, two levels up; its usage counts
        // everything below it.
        std::fs::write(mount.join("box/memory.limit_in_bytes"), "1000\n").unwrap();
        std::fs::write(mount.join("box/memory.usage_in_bytes"), "600\n").unwrap();
        std::fs::write(
            mount.join("box/memory.stat"),
            "cache 9\ntotal_inactive_file 50\n",
        )
        .unwrap();
        std::fs::write(
            mount.join("box/inner/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(mount.join("box/inner/memory.usage_in_bytes"), "100\n").unwrap();
        assert_eq!(cgroup_headroom(&found), Some(450));

        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let chain = locate_memory_cgroup("0::/a/b\n", root).unwrap();
        assert_eq!(chain.files, V2);
        assert_eq!(
            chain.dirs,
            vec![root.join("a/b"), root.join("a"), root.to_owned()]
        );
        // The tightest limit along the chain wins.
        std::fs::write(root.join("a/memory.max"), "1000\n").unwrap();
        std::fs::write(root.join("a/memory.current"), "400\n").unwrap();
        std::fs::write(root.join("a/memory.stat"), "inactive_file 100\n").unwrap();
        std::fs::write(root.join("a/b/memory.max"), "max\n").unwrap();
        std::fs::write(root.join("a/b/memory.current"), "300\n").unwrap();
        assert_eq!(cgroup_headroom(&chain), Some(700));
    }
}
