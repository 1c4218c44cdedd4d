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
//! - `MemTotal` from `/proc/meminfo`, which must be readable (not Linux: an error).
//!
//! cgroup v1's `memory.limit_in_bytes` is not read: v1 hierarchies are legacy, and their
//! paths inside a container often do not resolve. On a v1 host the limit is `MemTotal`.
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
            MemoryLimitSource::CgroupV2(path) => write!(f, "{gib:.2} GiB ({})", path.display()),
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
        let root = CGROUP_V2_ROOTS
            .iter()
            .map(Path::new)
            .find(|r| r.join("cgroup.controllers").is_file());
        Self::from_contents(&meminfo, &cgroup, root, |p| std::fs::read_to_string(p).ok())
    }

    /// The limit from the contents of `/proc/meminfo` and `/proc/self/cgroup`, the cgroup v2
    /// mount `root` (if any) and `read` for the `memory.max` files (`None`: absent).
    fn from_contents(
        meminfo: &str,
        proc_self_cgroup: &str,
        root: Option<&Path>,
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
        let (Some(root), Some(path)) = (root, cgroup_v2_path(proc_self_cgroup)) else {
            return Ok(best);
        };
        // The cgroup and its ancestors, the cgroup's own `memory.max` first.
        let mut dir = root.join(path.trim_start_matches('/'));
        while dir.starts_with(root) && dir != root {
            let file = dir.join("memory.max");
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
            if !dir.pop() {
                break;
            }
        }
        Ok(best)
    }
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
        MemoryLimit::from_contents(MEMINFO, cgroup, Some(Path::new("/cg")), |p| {
            files.get(p).cloned()
        })
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
