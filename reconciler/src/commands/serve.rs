//! `gitfleet serve`: the reconciler as a service. Reconcile passes run on
//! their own thread (git2 blocks); the HTTP server of `web` shows what
//! they saw and takes GitHub webhooks as triggers.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::pass;
use crate::setup::ReconcilerArgs;
use crate::web::tls::{self, CertFiles, TlsListener};
use crate::web::{listen, router, AppState, Io};

/// Run the reconciler and serve the fleet's status pages, /metrics and
/// GitHub webhooks.
///
/// Passes run every --interval, at once when a local repo's refs move, and
/// at once on a valid webhook delivery (push, pull_request,
/// pull_request_review; deliveries are checked against the secret and
/// handled once each). The pages are read-only and update live.
///
/// Endpoints: / (overview), /nodes (?env=, ?label=key=value, ?health=),
/// /nodes/<id>, /rollouts, /api/status (?env=; the fleet-status JSON),
/// /events (server-sent events, one per pass), /metrics (Prometheus),
/// /healthz, /readyz (after the first good pass), POST /webhooks/github,
/// POST /v1/reports/<node> (agents' signed heartbeats, where fleet.kdl's
/// `report-to` names this server: liveness with no store write each).
///
/// Examples:
///   gitfleet serve --repo https://github.com/acme/fleet.git \
///       --online-key /etc/gitfleet/online.key --listen 127.0.0.1:8080 \
///       --webhook-secret-file /etc/gitfleet/webhook.secret
///   # HTTPS on every interface, pages read-only to anyone who reaches it:
///   gitfleet serve ... --listen 0.0.0.0:8443 --public-read-only \
///       --tls-cert /etc/gitfleet/tls/fullchain.pem --tls-key /etc/gitfleet/tls/key.pem
///   # Sign-in with GitHub (an OAuth app whose callback URL is
///   # https://fleet.example.com/auth/callback); fleet.kdl's `viewers` see,
///   # its `operators` also get pause/resume/rollback/approve buttons:
///   gitfleet serve ... --listen 0.0.0.0:8443 --tls-cert ... --tls-key ... \
///       --public-url https://fleet.example.com --github-repo acme/fleet \
///       --github-client-id Iv1.0123 --github-client-secret-file /etc/gitfleet/oauth.secret \
///       --session-key-file /etc/gitfleet/session.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    #[command(flatten)]
    reconciler: ReconcilerArgs,
    /// Address to serve on. Any address but a loopback one needs sign-in
    /// (--github-client-id) or --public-read-only.
    #[arg(long, env = "GITFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve the read-only pages to anyone who can reach --listen (agents'
    /// reports and GitHub's webhooks are signed and checked either way).
    #[arg(long)]
    public_read_only: bool,
    /// PEM certificate chain to serve HTTPS with (with --tls-key); read
    /// again when the file changes, so a renewal needs no restart.
    #[arg(
        long,
        env = "GITFLEET_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "GITFLEET_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// File holding the GitHub webhook secret; without it webhooks are refused.
    #[arg(long, env = "GITFLEET_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<std::path::PathBuf>,
    /// Sign people in with GitHub: the OAuth app's client id (with
    /// --github-client-secret-file). Roles come from fleet.kdl's
    /// `viewers` and `operators`.
    #[arg(
        long,
        env = "GITFLEET_GITHUB_CLIENT_ID",
        requires = "github_client_secret_file"
    )]
    github_client_id: Option<String>,
    /// File holding the OAuth app's client secret.
    #[arg(long, env = "GITFLEET_GITHUB_CLIENT_SECRET_FILE", value_name = "FILE")]
    github_client_secret_file: Option<std::path::PathBuf>,
    /// Where people sign in to GitHub (GitHub Enterprise: https://HOST).
    #[arg(
        long,
        env = "GITFLEET_GITHUB_WEB",
        default_value = "https://github.com"
    )]
    github_web: String,
    /// This server's URL as people's browsers reach it (default: the
    /// --listen address): sign-in returns there, and writes must come from
    /// there.
    #[arg(long, env = "GITFLEET_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// File of 32 or more random bytes that seals session cookies; give
    /// every replica the same one. Without it sessions last as long as
    /// this process.
    #[arg(long, env = "GITFLEET_SESSION_KEY_FILE", value_name = "FILE")]
    session_key_file: Option<std::path::PathBuf>,
    /// A node whose last report is older than this is stale.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    stale_after: std::time::Duration,
}

/// Sign-in as the arguments set it up, if they do.
fn sign_in(args: &ServeArgs) -> anyhow::Result<Option<crate::web::auth::SignIn>> {
    let (Some(id), Some(secret_file)) = (&args.github_client_id, &args.github_client_secret_file)
    else {
        return Ok(None);
    };
    let secret = std::fs::read_to_string(secret_file)
        .with_context(|| format!("reading the OAuth client secret {}", secret_file.display()))?;
    let secret = secret.trim().to_owned();
    anyhow::ensure!(
        !secret.is_empty(),
        "the OAuth client secret file {} is empty",
        secret_file.display()
    );
    let sealer = match &args.session_key_file {
        Some(path) => crate::web::session::Sealer::from_file(path)?,
        None => crate::web::session::Sealer::random()?,
    };
    match &args.public_url {
        Some(url) => anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "--public-url {url} is not an http(s) URL"
        ),
        // The listen address is what browsers reach only on loopback.
        None => anyhow::ensure!(
            args.listen.ip().is_loopback(),
            "sign-in on {} needs --public-url: the URL people's browsers reach this server at (sign-in returns there, and writes must come from there)",
            args.listen
        ),
    }
    Ok(Some(crate::web::auth::SignIn::new(
        id.clone(),
        secret,
        &args.github_web,
        &args.reconciler.github.github_api,
        args.public_url.clone(),
        sealer,
    )))
}

/// How long requests may take to finish once stopping.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let signs_in = args.github_client_id.is_some();
    if !args.listen.ip().is_loopback() && !args.public_read_only && !signs_in {
        anyhow::bail!(
            "refusing to serve the status pages on {}: it is not a loopback address and sign-in is not set up; set up sign-in with --github-client-id and --github-client-secret-file, pass --public-read-only to show the pages read-only to anyone who can reach them, or listen on 127.0.0.1 behind a proxy that signs people in",
            args.listen
        );
    }
    let sign_in = sign_in(args)?;
    let certs = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            CertFiles::open(cert, key).context("loading the TLS certificate")?,
        )),
        _ => None,
    };
    let secret = match &args.webhook_secret_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the webhook secret {}", path.display()))?;
            let secret = text.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !secret.is_empty(),
                "webhook secret file {} is empty",
                path.display()
            );
            Some(secret.as_bytes().to_vec())
        }
    };
    let stale_after =
        chrono::Duration::from_std(args.stale_after).context("--stale-after is too long")?;
    let mut reconciler = args.reconciler.open()?;
    reconciler.notifier.stale_after = stale_after;
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(1);
    let _watcher = args.reconciler.watch(trigger_tx.clone());
    let io = Io::of(&mut reconciler);
    let mut state = AppState::new(secret, trigger_tx, stale_after, Some(io));
    if let Some(sign_in) = sign_in {
        // The buttons commit through a mirror of their own.
        let cache = args.reconciler.cache.with_extension("actions");
        let mirror = crate::setup::open_mirror(&args.reconciler.git, &cache)
            .context("opening the mirror the pages' actions commit through")?;
        state.actions = Some(crate::web::actions::Actions::new(
            mirror,
            args.reconciler.github.github_repo.clone(),
        ));
        state.sign_in = Some(sign_in);
    }
    let state = Arc::new(state);
    let stop_rx = state.shutdown.subscribe();

    let interval = args.reconciler.interval;
    let passes_state = Arc::clone(&state);
    let reconciler_thread = pass::spawn_passes(
        reconciler,
        interval,
        trigger_rx,
        stop_rx,
        move |result, took| {
            passes_state.record(result, took);
        },
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let listener = listen(args.listen).await?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        let here = format!("{scheme}://{}", listener.local_addr()?);
        if let Some(sign_in) = &state.sign_in {
            sign_in.default_public_url(here.clone());
        }
        println!("serving {here}/ (Ctrl-C stops)");
        // One signal stops the passes, ends the event streams and drains
        // the other requests, for at most DRAIN.
        let shutdown = Arc::clone(&state);
        tokio::spawn(async move {
            gitfleet_io::signals::shutdown().await;
            tracing::info!("stopping");
            shutdown.shutdown.send_replace(true);
        });
        let mut stopped = state.shutdown.subscribe();
        let mut drained = state.shutdown.subscribe();
        let stopping = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let app = router(Arc::clone(&state));
        let server = async move {
            match certs {
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopping)
                        .await
                }
                Some(certs) => {
                    let tls = TlsListener::new(listener, tls::acceptor(certs))?;
                    axum::serve(tls, app).with_graceful_shutdown(stopping).await
                }
            }
        };
        tokio::select! {
            r = server => r.context("serving HTTP"),
            () = async move {
                let _ = drained.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN).await;
            } => {
                tracing::warn!(seconds = DRAIN.as_secs(), "requests still open after the drain time; stopping anyway");
                Ok(())
            }
        }
    });
    state.shutdown.send_replace(true);
    match reconciler_thread.join() {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the reconciler thread panicked"),
    }
    served?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
