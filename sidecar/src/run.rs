//! Startup and shutdown: bind everything (admin first, so probes answer while starting), mark
//! ready, serve, and drain on SIGTERM / SIGINT / POST /shutdown:
//!
//! 1. readiness goes false, the inbound listener closes, inbound connections finish their
//!    in-flight requests;
//! 2. the outbound side keeps serving (new connections too) for `--drain-period` at least
//!    (SIGTERM reaches the app and a classic sidecar together: the app's calls during its own
//!    graceful shutdown must still work), then until no connection is open;
//! 3. the outbound listener closes, what is left finishes; spans are flushed; return.
//!
//! The whole drain is bounded by `--drain-timeout`. POST /shutdown skips the drain period:
//! the app calls it when it is done.

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
        roots: settings.collector_roots.clone(),
        protocol: live.collector_protocol,
        resource: crate::config::resource(&settings.args),
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
    let file_error = settings.file_error.clone();
    let shared = Shared::new(settings, live, export.clone());
    if let Some(reason) = &file_error {
        // Counted like a rejected reload: the same metric says "the file is not in use".
        shared.metrics.reload(false);
        tracing::error!(%reason, "config file rejected at start; running on flags until a valid version appears");
    }

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

    let app_done = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); false }
        _ = sigint.recv() => { tracing::info!("SIGINT: draining"); false }
        () = shared.shutdown_signal() => true,
    };
    shared.trigger_shutdown();
    let a = &shared.settings.args;
    let start = tokio::time::Instant::now();
    let deadline = start + a.drain_timeout;
    let outbound_until = if app_done {
        start
    } else {
        (start + a.drain_period).min(deadline)
    };

    // The inbound accept loop returns on the shutdown signal and drops its listener; inbound
    // HTTP connections saw the same signal and finish their in-flight requests (hyper's
    // graceful shutdown). The outbound side serves on through the drain period, then until
    // the app's connections are gone.
    let _ = inbound_loop.await;
    tokio::time::sleep_until(outbound_until).await;
    wait_for_no_connections(&shared, deadline).await;
    shared.close_outbound();
    let _ = outbound_loop.await;
    // Opaque TCP connections have no request boundary: they end on their own or at the
    // deadline.
    wait_for_no_connections(&shared, deadline).await;
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

/// Returns once no connection is open, or at `deadline`.
async fn wait_for_no_connections(shared: &Shared, deadline: tokio::time::Instant) {
    while shared.metrics.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
