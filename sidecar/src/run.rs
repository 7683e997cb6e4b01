//! Startup and shutdown: bind everything (admin first, so probes answer while starting), mark
//! ready, serve, and on SIGTERM / SIGINT / POST /shutdown: stop accepting, drain in-flight
//! connections up to `--drain-timeout`, flush spans, return.

use std::sync::Arc;
use std::time::Duration;

use sidetrace_contract::Direction;
use sidetrace_trace::{Exporter, ExporterConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Settings;
use crate::error::Result;
use crate::listener::{accept_loop, bind};
use crate::state::{Live, Shared};

/// Longest the final span flush may take after draining.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the proxy until shutdown completes.
pub async fn run(settings: Settings) -> Result<()> {
    let live = Live::build(&settings, settings.file.clone())?;
    let a = &settings.args;
    let (export, export_task) = Exporter::spawn(ExporterConfig {
        endpoint: live.collector.clone(),
        queue_capacity: a.export_queue_size,
        max_batch: a.export_batch_size,
        flush_interval: a.export_interval,
        request_timeout: a.export_timeout,
        max_retries: a.export_retries,
        ..ExporterConfig::new(live.collector.clone())
    });
    // Signal handlers first: a SIGTERM during startup must still drain, not kill.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let admin = bind(settings.admin_addr())?;
    let inbound = bind(settings.inbound_addr())?;
    let outbound = bind(settings.outbound_addr())?;
    let file_path = settings.args.config.clone();
    let file_text = settings.file_text.clone();
    let shared = Shared::new(settings, live, export.clone());

    tokio::spawn(crate::admin::serve(admin, Arc::clone(&shared)));
    let inbound_loop = tokio::spawn(accept_loop(
        inbound,
        Direction::Inbound,
        Arc::clone(&shared),
    ));
    let outbound_loop = tokio::spawn(accept_loop(
        outbound,
        Direction::Outbound,
        Arc::clone(&shared),
    ));
    if let Some(path) = file_path {
        if file_text.is_none() {
            tracing::warn!(path = %path.display(), "config file not present yet; running on flags until it appears");
        }
        tokio::spawn(crate::reload::watch(Arc::clone(&shared), path, file_text));
    }
    tokio::spawn(crate::reclaim::watch(Arc::clone(&shared)));
    shared.set_ready();
    tracing::info!(
        inbound = %shared.settings.inbound_addr(),
        outbound = %shared.settings.outbound_addr(),
        admin = %shared.settings.admin_addr(),
        "sidetrace-proxy ready"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
        () = shared.shutdown_signal() => {}
    }
    shared.trigger_shutdown();
    let deadline = tokio::time::Instant::now() + shared.settings.args.drain_timeout;

    // The accept loops return on the shutdown signal and drop their listeners; every HTTP
    // connection saw the same signal and is finishing its in-flight requests (hyper's graceful
    // shutdown). Opaque TCP connections have no request boundary: they end on their own or
    // at the deadline.
    let _ = inbound_loop.await;
    let _ = outbound_loop.await;
    while shared.metrics.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.metrics.open_connections();
    if left > 0 {
        tracing::warn!(
            open = left,
            "drain timeout reached; closing remaining connections"
        );
    }
    export.flush(FLUSH_TIMEOUT).await;
    export_task.abort();
    tracing::info!("drained; exiting");
    Ok(())
}
