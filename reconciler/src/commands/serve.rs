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
    /// Serve several fleets, as this file lists them (see the
    /// gitfleet_schemas::fleets format in the README): each with its own
    /// repo, store, keys, lease, state branch and passes, at
    /// /fleets/<name>/; the pages switch between them and /metrics labels
    /// each series with its fleet. The command line's repo, store, key
    /// and webhook secret are then not used.
    #[arg(long, env = "GITFLEET_FLEETS", value_name = "FILE")]
    fleets: Option<std::path::PathBuf>,
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

/// One fleet to serve: its reconciler's settings and webhook secret.
struct FleetSetup {
    /// `None` for the one fleet of the command line.
    name: Option<String>,
    reconciler: ReconcilerArgs,
    webhook_secret_file: Option<std::path::PathBuf>,
}

/// A fleet being served: its pages' state and its passes' thread.
struct Started {
    name: String,
    state: Arc<AppState>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// The fleets `path` lists, each with what the command line gives all
/// (git credentials, GitHub's API, the holder, the interval); paths in
/// the file are relative to it, and a fleet's cache defaults to
/// `<--cache>/<name>`.
fn read_fleets(path: &std::path::Path, base: &ReconcilerArgs) -> anyhow::Result<Vec<FleetSetup>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the fleets file {}", path.display()))?;
    let decoded = gitfleet_schemas::fleets::FleetsFile::decode(&text);
    if let Some(e) = decoded.errors.first() {
        let line = text[..e.span.start.min(text.len())].matches('\n').count() + 1;
        anyhow::bail!(
            "{}:{line}: {}{}",
            path.display(),
            e.message,
            e.help
                .as_ref()
                .map_or(String::new(), |h| format!(" (help: {h})"))
        );
    }
    let file = decoded.value.context("the fleets file names no fleet")?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let at = |p: &str| dir.join(p);
    Ok(file
        .fleets
        .into_iter()
        .map(|e| {
            let name = e.name.value.clone();
            let mut r = base.clone();
            // A path is relative to the file; a URL (or host:path) is not.
            let repo = &e.repo.value;
            r.git.repo = if repo.contains(':') || std::path::Path::new(repo).is_absolute() {
                repo.clone()
            } else {
                at(repo).display().to_string()
            };
            r.git.branch = e.branch.map_or_else(|| "main".to_owned(), |b| b.value);
            r.git.state_branch = e.state_branch.map(|b| b.value);
            r.store = e.store.map(|s| s.value);
            r.online_key = Some(at(&e.online_key.value));
            r.cache = e
                .cache
                .map_or_else(|| base.cache.join(&name), |c| at(&c.value));
            r.github.github_repo = e.github_repo.map(|g| g.value);
            if let Some(t) = e.github_token_file {
                r.github.github_token_file = Some(at(&t.value));
            }
            FleetSetup {
                name: Some(name),
                reconciler: r,
                webhook_secret_file: e.webhook_secret_file.map(|w| at(&w.value)),
            }
        })
        .collect())
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the webhook secret {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !secret.is_empty(),
        "webhook secret file {} is empty",
        path.display()
    );
    Ok(secret.as_bytes().to_vec())
}

/// Start one fleet: its pages' state, and a thread for its passes. The
/// one fleet of the command line must open (or serve fails); one of
/// several that cannot (its repo unreachable, say) is tried again every
/// interval by its own thread, its pages saying why, and never holds the
/// others up.
fn start_fleet(
    setup: FleetSetup,
    sign_in: Option<Arc<crate::web::auth::SignIn>>,
    stale_after: chrono::Duration,
    several: bool,
) -> anyhow::Result<Started> {
    let name = setup.name.clone().unwrap_or_else(|| "fleet".to_owned());
    let secret = setup
        .webhook_secret_file
        .as_deref()
        .map(read_secret)
        .transpose()?;
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(1);
    let watcher = setup.reconciler.watch(trigger_tx.clone());
    let mut state = AppState::new(secret, trigger_tx, stale_after, None);
    state.name = setup.name.clone();
    if let Some(sign_in) = sign_in {
        // The buttons commit through a mirror of their own, opened when
        // first pressed.
        state.actions = Some(crate::web::actions::Actions::new(
            setup.reconciler.git.clone(),
            setup.reconciler.cache.with_extension("actions"),
            setup.reconciler.github.config()?,
        ));
        state.sign_in = Some(sign_in);
    }
    let state = Arc::new(state);
    let first = if several {
        None
    } else {
        Some(setup.reconciler.open()?)
    };
    let stop_rx = state.shutdown.subscribe();
    let passes_state = Arc::clone(&state);
    let args = setup.reconciler;
    let fleet = name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("fleet-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut reconciler = match first {
                Some(r) => r,
                None => loop {
                    match args.open() {
                        Ok(r) => break r,
                        Err(e) => {
                            let why = format!("{e:#}");
                            tracing::error!(fleet = %fleet, error = %why, "cannot open the fleet; trying again");
                            passes_state.open_failed(format!("cannot open the fleet: {why}"));
                            let mut stop = stop_rx.clone();
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()?;
                            let stopped = rt.block_on(async {
                                tokio::time::timeout(args.interval, stop.wait_for(|s| *s))
                                    .await
                                    .is_ok()
                            });
                            if stopped {
                                return Ok(());
                            }
                        }
                    }
                },
            };
            reconciler.notifier.stale_after = stale_after;
            passes_state.set_io(Io::of(&mut reconciler));
            let recorder = Arc::clone(&passes_state);
            let passes = pass::spawn_passes(
                reconciler,
                args.interval,
                trigger_rx,
                stop_rx,
                move |result, took| recorder.record(result, took),
            )?;
            match passes.join() {
                Ok(result) => result,
                Err(_) => anyhow::bail!("the passes of {fleet} panicked"),
            }
        })
        .with_context(|| format!("starting the thread of fleet {name}"))?;
    Ok(Started {
        name,
        state,
        thread,
        _watcher: watcher,
    })
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
    let sign_in = sign_in(args)?.map(Arc::new);
    let certs = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            CertFiles::open(cert, key).context("loading the TLS certificate")?,
        )),
        _ => None,
    };
    let stale_after =
        chrono::Duration::from_std(args.stale_after).context("--stale-after is too long")?;
    let fleets = match &args.fleets {
        None => vec![FleetSetup {
            name: None,
            reconciler: args.reconciler.clone(),
            webhook_secret_file: args.webhook_secret_file.clone(),
        }],
        Some(path) => read_fleets(path, &args.reconciler)?,
    };
    let several = args.fleets.is_some();
    let mut started = Vec::new();
    for setup in fleets {
        started.push(start_fleet(setup, sign_in.clone(), stale_after, several)?);
    }
    if several {
        crate::web::page::set_fleets(started.iter().map(|f| f.name.clone()).collect());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = tokio::sync::watch::Sender::new(false);
    let served = runtime.block_on(async {
        let listener = listen(args.listen).await?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        let here = format!("{scheme}://{}", listener.local_addr()?);
        if let Some(sign_in) = &sign_in {
            sign_in.default_public_url(here.clone());
        }
        println!("serving {here}/ (Ctrl-C stops)");
        for f in started.iter().filter(|_| several) {
            println!(
                "fleet {n}: pages {here}/select-fleet/{n}, webhooks {here}/fleets/{n}/webhooks/github, agents' report-to {here}/fleets/{n}",
                n = f.name
            );
        }
        // One signal stops every fleet's passes, ends the event streams
        // and drains the other requests, for at most DRAIN.
        let states: Vec<Arc<AppState>> = started.iter().map(|f| Arc::clone(&f.state)).collect();
        let stopper = stop.clone();
        tokio::spawn(async move {
            gitfleet_io::signals::shutdown().await;
            tracing::info!("stopping");
            stopper.send_replace(true);
            for s in states {
                s.shutdown.send_replace(true);
            }
        });
        let mut stopped = stop.subscribe();
        let mut drained = stop.subscribe();
        let stopping = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let app = if several {
            crate::web::fleets::router(
                started
                    .iter()
                    .map(|f| (f.name.clone(), Arc::clone(&f.state)))
                    .collect(),
            )
        } else {
            router(Arc::clone(&started[0].state))
        };
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
    for f in &started {
        f.state.shutdown.send_replace(true);
    }
    // A pass stuck in a git or store call that never ends must not keep
    // the process from stopping.
    let deadline = std::time::Instant::now() + DRAIN * 3;
    for f in started {
        while !f.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !f.thread.is_finished() {
            tracing::warn!(fleet = %f.name, "the fleet's pass has not ended; stopping without it");
            continue;
        }
        match f.thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("the reconciler thread of {} panicked", f.name),
        }
    }
    served?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
