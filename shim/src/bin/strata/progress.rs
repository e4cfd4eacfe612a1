//! Progress bars for `strata image pull`: one bar per blob on stderr, only when stderr is a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use layerstore::{Digest, PullProgress};

/// Bars on stderr (hidden when it is not a terminal, so logs and pipes stay clean).
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<Digest, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Bars { multi: MultiProgress::with_draw_target(target), bars: Mutex::new(BTreeMap::new()) }
    }

    fn with_bar(&self, digest: &Digest, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(digest).cloned()) {
            f(&bar);
        }
    }
}

impl PullProgress for Bars {
    fn started(&self, digest: &Digest, size: u64, resumed_at: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(digest.to_string().chars().take(19).collect::<String>());
        bar.set_position(resumed_at);
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(digest.clone(), bar);
        }
    }

    fn advanced(&self, digest: &Digest, bytes: u64) {
        self.with_bar(digest, |b| b.inc(bytes));
    }

    fn finished(&self, digest: &Digest) {
        self.with_bar(digest, ProgressBar::finish);
    }
}
