//! Where the integration tests find the real model.

use std::path::PathBuf;

/// The GGUF file the tests run.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model file in `$KVMESH_MODELS_DIR`, else `~/.cache/kvmesh/models` (where
/// `kvmesh model fetch` puts it), if it is there.
pub fn model_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("KVMESH_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kvmesh/models"),
    };
    let path = dir.join(MODEL_FILE);
    path.is_file().then_some(path)
}
