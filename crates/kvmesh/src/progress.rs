//! The progress bar of long runs (`kvmesh sim`, `kvmesh bench`): indicatif on stderr, only on
//! a terminal (never with `--json`, never in a pipe), so it cannot corrupt the output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over every request of every run (policy, target); hidden when not wanted.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub(crate) fn new(total: u64, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>24} [{wide_bar}] {pos}/{len} requests, eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    /// A new run (a policy, a target) starts.
    pub(crate) fn start(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }

    pub(crate) fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
