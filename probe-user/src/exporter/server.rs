//! The HTTP side: `/metrics` and `/healthz`, and the export loop.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use prometheus_client::registry::Registry;

use super::{
    admission::LabelPins,
    basic_auth::BasicAuth,
    collect::*,
    connections::BoundedListener,
    health::Heartbeat,
    labels::*,
    metrics::*,
    scrape::{LiveTotals, ScrapeCollector},
    text_format::*,
    tls::TlsListener,
    web_config::{self, WebConfig},
};
use crate::{
    cli::{ExportArgs, KernelPaths},
    error::UserError,
    model::report_filter::canonical_prefixes,
    model::report_filter::ReportFilter,
    probe::env::{keep_only_capabilities, RUNNING_CAPABILITIES},
    session::{ticker, Activity, Session, SessionOptions, StopSignals},
    trace::final_report::{end_recording, start_recording},
};

pub(crate) fn router(
    registry: Arc<Registry>,
    heartbeat: Heartbeat,
    basic_auth: Option<Arc<BasicAuth>>,
) -> axum::Router {
    use axum::{http::header, response::IntoResponse, routing::get};
    axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let registry = registry.clone();
                let basic_auth = basic_auth.clone();
                // OpenMetrics for scrapers that ask for it (Prometheus
                // does), the Prometheus text format for everything else.
                let openmetrics = wants_openmetrics(
                    headers
                        .get(header::ACCEPT)
                        .and_then(|accept| accept.to_str().ok()),
                );
                async move {
                    if let Some(auth) = basic_auth {
                        let given = headers
                            .get(header::AUTHORIZATION)
                            .map(|value| value.as_bytes().to_vec());
                        // bcrypt takes tens of milliseconds: off this thread.
                        let allowed =
                            tokio::task::spawn_blocking(move || auth.allows(given.as_deref()))
                                .await
                                .unwrap_or(false);
                        if !allowed {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                [(header::WWW_AUTHENTICATE, "Basic realm=\"mmapwatch\"")],
                                "Unauthorized\n",
                            )
                                .into_response();
                        }
                    }
                    match render(&registry) {
                        Ok(body) if openmetrics => {
                            ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
                        }
                        Ok(body) => (
                            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                            to_prometheus_text(&body),
                        )
                            .into_response(),
                        Err(_) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "encoding failed",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        // Says only "ok" or "stalled": open, so that kubelet's probes need
        // no password.
        .route(
            "/healthz",
            get(move || {
                let answer = heartbeat.answer();
                async move { answer }
            }),
        )
}

/// Serves HTTP (or HTTPS, with `tls`) on a thread (and runtime) of its
/// own: the export loop may block (a cgroup walk, /proc reads), and
/// scrapes and `/healthz` must still be answered meanwhile. The receiver
/// resolves if the server ends.
fn spawn_server(
    listener: std::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            let serve = || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let listener =
                        BoundedListener::new(tokio::net::TcpListener::from_std(listener)?);
                    tokio::spawn(listener.idle_sweeper());
                    match tls {
                        Some(config) => {
                            axum::serve(TlsListener::new(listener, config)?, app).await?
                        }
                        None => axum::serve(listener, app).await?,
                    }
                    Ok(())
                })
            };
            let _ = done.send(serve());
        })
        .context("starting the metrics server thread")?;
    Ok(ended)
}

/// A listening socket with a deep accept queue (tokio's default is 1,024):
/// a burst of connections waits there instead of having its SYNs dropped.
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// Runs `export` until SIGINT or SIGTERM.
pub async fn run(kernel: &KernelPaths, args: ExportArgs) -> anyhow::Result<u8> {
    crate::probe::env::check_privileges()?;
    let web = match &args.web_config_file {
        Some(path) => web_config::load(path).map_err(|err| UserError::Usage(err.to_string()))?,
        None => WebConfig {
            tls: None,
            basic_auth: None,
        },
    };
    // Bind first: a port in use fails before anything is loaded.
    let listener = listen(args.listen).map_err(|err| match err.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::Error::new(UserError::AddressInUse(args.listen)),
        _ => anyhow::Error::new(err).context(format!("listening on {}", args.listen)),
    })?;
    let local: SocketAddr = listener.local_addr()?;
    let options = SessionOptions {
        kernel: kernel.clone(),
        filter: args.filter.clone(),
        // COW faults are counted per writer in the kernel; their pages need
        // not cross the ring buffer.
        include_cow: false,
        command: Vec::new(),
        command_output: None,
        retain: Some(args.retain),
        report_writer_exits: false,
        stacks: false,
    };
    let mut session = Session::start(&options)?;
    // Its path prefixes pin files' series; every file is counted, and
    // every one is in its report.
    let recording = args
        .record
        .as_deref()
        .map(|path| start_recording(path, &mut session, &ReportFilter::default()))
        .transpose()?;
    // Attached: an agent that runs for months keeps only what reading its
    // maps and naming files needs, before any other thread exists.
    let kept = keep_only_capabilities(&RUNNING_CAPABILITIES)
        .context("dropping the capabilities no longer needed")?;
    log::info!("capabilities kept after attaching: {kept:?}");

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics
        .backend
        .get_or_create(&BackendLabels {
            backend: session.backend().into(),
        })
        .set(1);
    metrics
        .build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            revision: env!("MMAPWATCH_REVISION").into(),
            backend: session.backend().into(),
        })
        .set(1);
    let prefixes = canonical_prefixes(&args.filter.path_prefixes);
    let mut exporter = Exporter::new(
        metrics,
        args.per_file_top,
        prefixes,
        session.collector.mounts().clone(),
        &LabelPins {
            comm: args.keep_comm.clone(),
            cgroup: args.keep_cgroup.clone(),
            label_user: args.label_user,
        },
    );
    exporter.watch(&mut session);
    registry.register_collector(Box::new(ScrapeCollector(Box::new(LiveTotals {
        kernel: session.totals_reader()?,
        session: exporter.session_totals(),
        ring_bytes: session.ring_bytes(),
    }))));
    exporter.refresh(&mut session)?;
    let registry = Arc::new(registry);
    let heartbeat = Heartbeat::new(args.interval);
    heartbeat.beat();
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let mut server = spawn_server(
        listener.into_std()?,
        router(registry, heartbeat.clone(), web.basic_auth.clone()),
        web.tls.clone(),
    )?;
    eprintln!(
        "mmapwatch: serving metrics on {scheme}://{local}/metrics ({} programs attached in {} ms)",
        session.attached_programs(),
        session.attach_time().as_millis()
    );
    if !local.ip().is_loopback() && (web.tls.is_none() || web.basic_auth.is_none()) {
        // File paths, command names and cgroups are in the metrics.
        let missing = match (web.tls.is_some(), web.basic_auth.is_some()) {
            (false, false) => "no TLS and no authentication",
            (false, true) => "no TLS (passwords cross the network in clear)",
            _ => "no authentication",
        };
        eprintln!(
            "mmapwatch: warning: {local} is reachable beyond this host and /metrics has {missing}; see --web.config.file, or put it behind a network policy"
        );
    }

    let mut stop_signals = StopSignals::install()?;
    let mut tick = ticker(args.interval);
    loop {
        heartbeat.beat();
        tokio::select! {
            activity = session.next_activity() => { let _: Activity = activity.context("tracing")?; }
            _ = tick.tick() => {
                exporter.refresh(&mut session)?;
            }
            served = &mut server => {
                served.context("metrics server thread")?.context("metrics server")?;
                break;
            }
            name = stop_signals.recv() => {
                log::info!("stopped by {name}");
                break;
            }
        }
    }
    if let Some(recording) = &recording {
        end_recording(recording, &mut session, &ReportFilter::default())?;
    }
    Ok(0)
}
