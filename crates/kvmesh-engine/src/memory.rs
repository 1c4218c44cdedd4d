//! The process's memory limit, and a KV budget taken as a fraction of it (vLLM's
//! `gpu_memory_utilization`, for host memory).
//!
//! # The limit
//!
//! [`MemoryLimit::detect`] returns the smaller of
//!
//! - the cgroup v2 limit: `memory.max` of this process's cgroup (the `0::<path>` line of
//!   `/proc/self/cgroup`) and of each of its ancestors, the lowest numeric one, under
//!   `/sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified` (hybrid); `max` means no limit,
//!   and a missing or unreadable file means none at that level (a container often sees only
//!   its own cgroup);
//! - the cgroup v1 limit: `memory.limit_in_bytes` of the cgroup on the `memory` controller's
//!   line (`4:memory:<path>`) and of its ancestors under `/sys/fs/cgroup/memory`, *including*
//!   the mount's root: a container on a v1 host sees its own cgroup mounted there while
//!   `/proc/self/cgroup` names the host's path, which does not resolve inside it. Values of
//!   2^62 bytes and more are the kernel's "unlimited" (it prints 9223372036854771712);
//! - `MemTotal` from `/proc/meminfo`, which must be readable (not Linux: an error).
//!
//! # The budget
//!
//! [`kv_blocks_for_fraction`]: `fraction × limit − weight bytes`, rounded down to whole
//! blocks. Like vLLM's setting the fraction covers weights and KV together; unlike vLLM it
//! does not profile activations, the tokenizer or the allocator's overhead, so leave headroom
//! (0.5 or so on a shared machine). Parsing is split from reading so every parser is tested on
//! sample file contents; nothing read from a file is trusted (no panics on odd contents).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the system files are read from.
const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
const PROC_MEMINFO: &str = "/proc/meminfo";
const CGROUP_V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
const CGROUP_V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
/// cgroup v1 limits at or above this are "no limit" (the kernel's page-counter maximum,
/// 2^63 rounded down to a page, is what an unlimited cgroup reports).
const V1_UNLIMITED: u64 = 1 << 62;

/// Why the memory limit or a KV budget from it could not be determined.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// A system file that must be readable is not.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A system file's contents are not what the kernel writes.
    #[error("unexpected contents in {path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A fraction outside (0, 1].
    #[error("the KV cache memory fraction must be in (0, 1], got {0}")]
    FractionOutOfRange(f64),
    /// The fraction of the limit does not even hold the weights (or not one block beyond).
    #[error(
        "{fraction} of the {limit_bytes}-byte memory limit leaves no room for the KV cache \
         after {weight_bytes} bytes of weights (one block is {block_bytes} bytes); raise the \
         fraction or set the budget in GiB or blocks"
    )]
    NoRoomForKv {
        /// The fraction.
        fraction: f64,
        /// The memory limit.
        limit_bytes: u64,
        /// The weights.
        weight_bytes: u64,
        /// One KV block.
        block_bytes: u64,
    },
}

/// Which file set the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLimitSource {
    /// A cgroup v2 `memory.max` (this file).
    CgroupV2(PathBuf),
    /// A cgroup v1 `memory.limit_in_bytes` (this file).
    CgroupV1(PathBuf),
    /// `MemTotal` in `/proc/meminfo`.
    MemTotal,
}

/// How much memory this process may use, and where that figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit in bytes.
    pub bytes: u64,
    /// Where it came from.
    pub source: MemoryLimitSource,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = self.bytes as f64 / (1u64 << 30) as f64;
        match &self.source {
            MemoryLimitSource::CgroupV2(path) | MemoryLimitSource::CgroupV1(path) => {
                write!(f, "{gib:.2} GiB ({})", path.display())
            }
            MemoryLimitSource::MemTotal => write!(f, "{gib:.2} GiB (MemTotal)"),
        }
    }
}

impl MemoryLimit {
    /// Reads this process's limit from `/proc` and `/sys/fs/cgroup` (module docs).
    pub fn detect() -> Result<Self, MemoryError> {
        let meminfo = std::fs::read_to_string(PROC_MEMINFO).map_err(|source| MemoryError::Io {
            path: PROC_MEMINFO.into(),
            source,
        })?;
        // No /proc/self/cgroup (not Linux, or no cgroups): no cgroup limit.
        let cgroup = std::fs::read_to_string(PROC_SELF_CGROUP).unwrap_or_default();
        let roots = CgroupRoots {
            v2: CGROUP_V2_ROOTS
                .iter()
                .map(Path::new)
                .find(|r| r.join("cgroup.controllers").is_file()),
            v1_memory: Some(Path::new(CGROUP_V1_MEMORY_ROOT))
                .filter(|r| r.join("memory.limit_in_bytes").is_file()),
        };
        Self::from_contents(&meminfo, &cgroup, roots, |p| {
            std::fs::read_to_string(p).ok()
        })
    }

    /// The limit from the contents of `/proc/meminfo` and `/proc/self/cgroup`, the cgroup
    /// mounts `roots` and `read` for the limit files (`None`: absent).
    fn from_contents(
        meminfo: &str,
        proc_self_cgroup: &str,
        roots: CgroupRoots<'_>,
        mut read: impl FnMut(&Path) -> Option<String>,
    ) -> Result<Self, MemoryError> {
        let total = parse_mem_total(meminfo).map_err(|what| MemoryError::Malformed {
            path: PROC_MEMINFO.into(),
            what,
        })?;
        let mut best = MemoryLimit {
            bytes: total,
            source: MemoryLimitSource::MemTotal,
        };
        if let (Some(root), Some(path)) = (roots.v2, cgroup_v2_path(proc_self_cgroup)) {
            // The v2 root has no `memory.max`.
            for file in limit_files(root, path, "memory.max", false) {
                if let Some(text) = read(&file) {
                    let max = parse_memory_max(&text).map_err(|what| MemoryError::Malformed {
                        path: file.clone(),
                        what,
                    })?;
                    if let Some(bytes) = max.filter(|&b| b < best.bytes) {
                        best = MemoryLimit {
                            bytes,
                            source: MemoryLimitSource::CgroupV2(file),
                        };
                    }
                }
            }
        }
        if let (Some(root), Some(path)) = (roots.v1_memory, cgroup_v1_memory_path(proc_self_cgroup))
        {
            for file in limit_files(root, path, "memory.limit_in_bytes", true) {
                if let Some(text) = read(&file) {
                    let bytes =
                        parse_limit_in_bytes(&text).map_err(|what| MemoryError::Malformed {
                            path: file.clone(),
                            what,
                        })?;
                    if bytes < V1_UNLIMITED && bytes < best.bytes {
                        best = MemoryLimit {
                            bytes,
                            source: MemoryLimitSource::CgroupV1(file),
                        };
                    }
                }
            }
        }
        Ok(best)
    }
}

/// Where the cgroup hierarchies are mounted (`None`: not mounted).
#[derive(Debug, Clone, Copy)]
struct CgroupRoots<'a> {
    /// The v2 (unified) mount.
    v2: Option<&'a Path>,
    /// The v1 `memory` controller's mount.
    v1_memory: Option<&'a Path>,
}

/// `file` in the cgroup `path` under `root` and in each ancestor, the cgroup's own first; the
/// root's own file last when `with_root`. A path that climbs out of `root` gives nothing.
fn limit_files(root: &Path, path: &str, file: &str, with_root: bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dir = root.join(path.trim_start_matches('/'));
    while dir.starts_with(root) && dir != root {
        files.push(dir.join(file));
        if !dir.pop() {
            break;
        }
    }
    if with_root && dir == root {
        files.push(root.join(file));
    }
    files
}

/// `MemTotal` in bytes from the contents of `/proc/meminfo` (`MemTotal:  24683656 kB`).
fn parse_mem_total(meminfo: &str) -> Result<u64, String> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .ok_or("no MemTotal line")?;
    let mut fields = line.split_whitespace();
    let value = fields.next().ok_or("MemTotal has no value")?;
    let kib: u64 = value
        .parse()
        .map_err(|_| format!("MemTotal value {value:?} is not a number"))?;
    match fields.next() {
        Some("kB") => kib
            .checked_mul(1024)
            .ok_or_else(|| format!("MemTotal {kib} kB overflows")),
        unit => Err(format!("MemTotal unit is {unit:?}, expected \"kB\"")),
    }
}

/// The cgroup v2 path (`/user.slice/...`) from the contents of `/proc/self/cgroup`: the
/// line `0::<path>`. `None` when there is no such line (cgroup v1 only).
fn cgroup_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
}

/// The cgroup v1 path of the `memory` controller from the contents of `/proc/self/cgroup`:
/// the line `<id>:<controllers>:<path>` whose comma-separated controllers include `memory`.
fn cgroup_v1_memory_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })
        .map(str::trim)
        .filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
}

/// A v1 `memory.limit_in_bytes` file's contents: bytes (see [`V1_UNLIMITED`]).
fn parse_limit_in_bytes(text: &str) -> Result<u64, String> {
    let v = text.trim();
    v.parse()
        .map_err(|_| format!("memory.limit_in_bytes is {v:?}, not a byte count"))
}

/// A `memory.max` file's contents: bytes, or `None` for `max` (no limit).
fn parse_memory_max(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "max" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| format!("memory.max is {v:?}, not a byte count or \"max\"")),
    }
}

/// KV blocks in `fraction × limit_bytes − weight_bytes`, whole blocks of `block_bytes`.
/// Errors when the fraction is not in (0, 1] or leaves no room for one block.
pub fn kv_blocks_for_fraction(
    fraction: f64,
    limit_bytes: u64,
    weight_bytes: u64,
    block_bytes: u64,
) -> Result<usize, MemoryError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(MemoryError::FractionOutOfRange(fraction));
    }
    let usable = (fraction * limit_bytes as f64) as u64;
    let blocks = usable.saturating_sub(weight_bytes) / block_bytes.max(1);
    match usize::try_from(blocks) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(MemoryError::NoRoomForKv {
            fraction,
            limit_bytes,
            weight_bytes,
            block_bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MEMINFO: &str = "MemTotal:       24683656 kB\nMemFree:         1234567 kB\n\
                           MemAvailable:   20000000 kB\n";

    #[test]
    fn mem_total_is_parsed_in_bytes() {
        assert_eq!(parse_mem_total(MEMINFO), Ok(24_683_656 * 1024));
        assert!(parse_mem_total("MemFree: 1 kB\n").is_err());
        assert!(parse_mem_total("MemTotal: lots kB\n").is_err());
        assert!(parse_mem_total("MemTotal: 12 MB\n").is_err());
        assert!(parse_mem_total("MemTotal: 12\n").is_err());
        assert!(parse_mem_total("MemTotal:\n").is_err());
        assert!(parse_mem_total("MemTotal: 18446744073709551615 kB\n").is_err());
        assert!(parse_mem_total("").is_err());
    }

    #[test]
    fn cgroup_v2_path_is_the_zero_line() {
        let hybrid = "4:memory:/process_api/abc\n1:cpu:/\n0::/user.slice/session-1.scope\n";
        assert_eq!(cgroup_v2_path(hybrid), Some("/user.slice/session-1.scope"));
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/a\n"), None, "v1 only");
        assert_eq!(cgroup_v2_path("0::garbage"), None);
        assert_eq!(cgroup_v2_path("0::/a/../../etc"), None);
        assert_eq!(cgroup_v2_path(""), None);
    }

    #[test]
    fn memory_max_is_bytes_or_max() {
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert_eq!(parse_memory_max("1073741824\n"), Ok(Some(1 << 30)));
        assert!(parse_memory_max("-1").is_err());
        assert!(parse_memory_max("1G").is_err());
        assert!(parse_memory_max("").is_err());
    }

    fn detect(cgroup: &str, files: &[(&str, &str)]) -> Result<MemoryLimit, MemoryError> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.to_string()))
            .collect();
        let roots = CgroupRoots {
            v2: Some(Path::new("/cg")),
            v1_memory: Some(Path::new("/v1")),
        };
        MemoryLimit::from_contents(MEMINFO, cgroup, roots, |p| files.get(p).cloned())
    }

    #[test]
    fn the_lowest_limit_on_the_cgroup_path_wins_over_mem_total() {
        let total = MemoryLimit {
            bytes: 24_683_656 * 1024,
            source: MemoryLimitSource::MemTotal,
        };
        // No cgroup files, `max` everywhere, or limits above MemTotal: MemTotal.
        assert_eq!(detect("0::/a/b\n", &[]).unwrap(), total);
        assert_eq!(
            detect("0::/a/b\n", &[("/cg/a/b/memory.max", "max\n")]).unwrap(),
            total
        );
        assert_eq!(
            detect("0::/a\n", &[("/cg/a/memory.max", "99999999999999\n")]).unwrap(),
            total
        );
        // An ancestor's limit binds a child without one, and the lowest wins.
        let limit = detect(
            "0::/a/b/c\n",
            &[
                ("/cg/a/b/c/memory.max", "max"),
                ("/cg/a/b/memory.max", "2147483648"),
                ("/cg/a/memory.max", "4294967296"),
            ],
        )
        .unwrap();
        assert_eq!(
            limit,
            MemoryLimit {
                bytes: 2 << 30,
                source: MemoryLimitSource::CgroupV2("/cg/a/b/memory.max".into()),
            }
        );
        assert_eq!(limit.to_string(), "2.00 GiB (/cg/a/b/memory.max)");
        // A root cgroup or no v2 line: MemTotal; a garbled file: an error, not a guess.
        assert_eq!(detect("0::/\n", &[("/cg/memory.max", "1")]).unwrap(), total);
        assert_eq!(detect("", &[]).unwrap(), total);
        assert!(matches!(
            detect("0::/a\n", &[("/cg/a/memory.max", "lots")]),
            Err(MemoryError::Malformed { .. })
        ));
        // A path that climbs out of the mount is not followed.
        assert_eq!(
            detect("0::/../etc\n", &[("/cg/../etc/memory.max", "1")]).unwrap(),
            total
        );
    }

    #[test]
    fn cgroup_v1_limits_count_from_the_memory_line_and_the_mount_root() {
        let total = 24_683_656 * 1024;
        // This machine's hybrid layout: v1 memory controller, unlimited everywhere.
        let here = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let unlimited = "9223372036854771712\n";
        let limit = detect(
            here,
            &[
                ("/v1/process_api/abc/memory.limit_in_bytes", unlimited),
                ("/v1/process_api/memory.limit_in_bytes", unlimited),
                ("/v1/memory.limit_in_bytes", unlimited),
            ],
        )
        .unwrap();
        assert_eq!(limit.source, MemoryLimitSource::MemTotal);
        assert_eq!(limit.bytes, total);
        // A limit on an ancestor binds; controllers may share a line.
        let limit = detect(
            "7:cpu,memory:/a/b\n",
            &[
                ("/v1/a/b/memory.limit_in_bytes", unlimited),
                ("/v1/a/memory.limit_in_bytes", "1073741824\n"),
            ],
        )
        .unwrap();
        assert_eq!(
            limit,
            MemoryLimit {
                bytes: 1 << 30,
                source: MemoryLimitSource::CgroupV1("/v1/a/memory.limit_in_bytes".into()),
            }
        );
        // In a container the host's path does not resolve; the mount root is its cgroup.
        let limit = detect(
            "4:memory:/docker/0123\n",
            &[("/v1/memory.limit_in_bytes", "536870912")],
        )
        .unwrap();
        assert_eq!(limit.bytes, 512 << 20);
        // v2 and v1 both set: the lower wins.
        let limit = detect(
            "4:memory:/a\n0::/b\n",
            &[
                ("/v1/a/memory.limit_in_bytes", "3221225472"),
                ("/cg/b/memory.max", "2147483648"),
            ],
        )
        .unwrap();
        assert_eq!(
            limit.source,
            MemoryLimitSource::CgroupV2("/cg/b/memory.max".into())
        );
        // Garbage is an error; a climbing path or a line without `memory` is ignored.
        assert!(matches!(
            detect("4:memory:/a\n", &[("/v1/a/memory.limit_in_bytes", "-1")]),
            Err(MemoryError::Malformed { .. })
        ));
        assert_eq!(cgroup_v1_memory_path("4:memory:/../etc\n"), None);
        assert_eq!(cgroup_v1_memory_path("3:cpuset:/a\n4:memory\n"), None);
        assert_eq!(cgroup_v1_memory_path("4:cpu,memory:/x\n"), Some("/x"));
    }

    #[test]
    fn blocks_for_a_fraction_subtract_the_weights() {
        let gib = 1u64 << 30;
        // 0.5 of 8 GiB = 4 GiB, minus 1 GiB of weights = 3 GiB of 1 MiB blocks.
        assert_eq!(
            kv_blocks_for_fraction(0.5, 8 * gib, gib, 1 << 20).unwrap(),
            3072
        );
        assert_eq!(kv_blocks_for_fraction(1.0, 10, 0, 3).unwrap(), 3);
        for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                kv_blocks_for_fraction(bad, gib, 0, 1),
                Err(MemoryError::FractionOutOfRange(_))
            ));
        }
        let err = kv_blocks_for_fraction(0.1, 8 * gib, gib, 1 << 20).unwrap_err();
        assert!(matches!(err, MemoryError::NoRoomForKv { .. }), "{err}");
        assert!(err.to_string().contains("leaves no room"), "{err}");
        // Less than one block left is no room either.
        assert!(kv_blocks_for_fraction(1.0, 100, 90, 11).is_err());
    }
}
