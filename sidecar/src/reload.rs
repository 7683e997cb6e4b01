//! Config hot-reload. A mounted ConfigMap changes by an atomic symlink swap, which inotify on
//! the file path does not always report, so the file is re-read by path every
//! `--reload-interval` and compared by content. A valid new file swaps the live config (new
//! requests see it, in-flight ones keep theirs, no connection is touched); an invalid one is
//! logged and counted and the old config stays.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::parse_file;
use crate::state::{Live, Shared};

/// Polls the config file until shutdown.
pub async fn watch(shared: Arc<Shared>, path: PathBuf, mut last: Option<String>) {
    let interval = shared.settings.args.reload_interval;
    let stop = shared.shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap the path can briefly not exist; keep the old config and retry.
                tracing::debug!(path = %path.display(), error = %e, "config file not readable; keeping the current config");
                continue;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        match apply(&shared, &text) {
            Ok(()) => {
                shared.metrics.reload(true);
                shared.set_file_error(None);
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(reason) => {
                shared.metrics.reload(false);
                shared.set_file_error(Some(format!("{}: {reason}", path.display())));
                tracing::error!(path = %path.display(), %reason, "rejected invalid config file; keeping the previous config");
            }
        }
        // Remember the text either way, so a bad file is reported once, not every interval.
        last = Some(text);
    }
}

/// Validates `text` and swaps it in; on error nothing changes.
pub fn apply(shared: &Shared, text: &str) -> Result<(), String> {
    let file = parse_file(text)?;
    let live = Live::build(&shared.settings, file).map_err(|e| e.to_string())?;
    let old = shared.live();
    if old.collector != live.collector || old.collector_protocol != live.collector_protocol {
        // Only the exporter changes: request connections and listeners are not touched.
        tracing::info!(collector = %live.collector, protocol = %live.collector_protocol, "collector changed");
        shared
            .export
            .set_collector(live.collector.clone(), live.collector_protocol);
    }
    shared.set_live(live);
    Ok(())
}
