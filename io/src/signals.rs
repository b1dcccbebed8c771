//! Stopping cleanly: both binaries finish what they are doing (a poll, a
//! pass, the requests in flight) and exit on SIGTERM (systemd) or Ctrl-C.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
