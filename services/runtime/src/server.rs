//! Hosting a gRPC service: health, reflection, tower layers, readiness and bounded graceful
//! shutdown, the same for every Relay service.
//!
//! Health (`grpc.health.v1.Health`) starts NOT_SERVING for the whole server (`""`) and for each
//! service name. A readiness task runs the service's dependency checks (PostgreSQL, Redis) and
//! turns health SERVING on the first pass; it turns it NOT_SERVING again only after
//! `server.readiness_failure_threshold` consecutive failures, so one slow ping does not flap a
//! pod out of its Service. Liveness is the health entry named [`LIVENESS`], SERVING for as
//! long as the process runs: it never depends on another service, so a database outage makes
//! pods unready, never restarts them. On SIGTERM health turns NOT_SERVING at once, the listener stops accepting,
//! in-flight calls get `server.shutdown_grace_seconds` to finish, and streams are told to end
//! through [`ServiceHost::shutdown_token`].
//!
//! The listener serves TLS (reloaded when its files change) and every call but health passes
//! the auth layer ([`crate::security`]): both are decided at [`ServiceHost::bind`] from the
//! `[security]` settings, and only a development setup may turn either off.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::RoutesBuilder,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    BoxError,
    audit::{AuditSink, layer::AuditLayer, settings::AuditSettings},
    config::{Config, ServerSettings},
    layers::{MetricsLayer, RequestContextLayer},
    metrics,
    security::{
        Posture, Reflection, SecuritySettings,
        auth::{AuthLayer, Authenticator},
        limits::{self, RateLimitLayer, RateLimits},
        tls::ServerTls,
    },
};

/// The services every port hosts beside the Relay service itself.
const HOSTED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The health service name that reports liveness: SERVING while the process runs.
pub const LIVENESS: &str = "liveness";

/// The future a readiness check returns: `Err` carries a short description of the failure.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// A gRPC server being assembled: the service's handlers and its readiness checks.
pub struct ServiceHost {
    settings: ServerSettings,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    checks: Vec<(&'static str, Check)>,
    shutdown: CancellationToken,
    admin: Option<SocketAddr>,
    security: SecuritySettings,
    insecure_dev: bool,
    audit: Option<(AuditSink, AuditSettings)>,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost")
            .field("services", &self.names)
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ServiceHost {
    /// A server with the given settings and no services yet. Its security is the default,
    /// TLS and authentication, with no files: [`Self::security`] says where they are (or, in
    /// a development setup, that there are none).
    #[must_use]
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            settings: settings.clone(),
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            checks: Vec::new(),
            shutdown: CancellationToken::new(),
            admin: None,
            security: SecuritySettings::default(),
            insecure_dev: false,
            audit: None,
        }
    }

    /// A server for a service's loaded configuration: its server settings, its security
    /// (`[security]`), and its admin endpoint (`GET /metrics`) on
    /// [`crate::config::Settings::admin_addr`].
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        let mut host = Self::new(&config.settings.server)
            .security(&config.settings.security, config.insecure_allowed());
        host.admin = Some(config.settings.admin_addr(config.service));
        host
    }

    /// Sets the TLS and authentication settings; `insecure_dev` allows turning them off
    /// (see [`SecuritySettings::posture`]).
    #[must_use]
    pub fn security(mut self, security: &SecuritySettings, insecure_dev: bool) -> Self {
        self.security = security.clone();
        self.insecure_dev = insecure_dev;
        self
    }

    /// Serves a generated service (e.g. `AvailabilityServiceServer::new(handler)`); its name is
    /// reported by health and reflection.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Records refused calls and failed writes in `sink`, the service's trail, and prunes it
    /// past the retention of `settings` (see [`crate::audit::layer`]).
    #[must_use]
    pub fn audit(mut self, sink: AuditSink, settings: &AuditSettings) -> Self {
        self.audit = Some((sink, settings.clone()));
        self
    }

    /// Adds a dependency check run by the readiness task (e.g. a PostgreSQL `SELECT 1`).
    #[must_use]
    pub fn readiness_check<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> CheckFuture + Send + Sync + 'static,
    {
        self.checks.push((name, Arc::new(check)));
        self
    }

    /// A token cancelled when shutdown starts; long-lived streams select on it and end.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Binds the listener (port 0 picks a free port), after loading the TLS files and the
    /// JWKS.
    ///
    /// # Errors
    /// When the security settings are incomplete or refused (the message names the
    /// variable), a TLS file or the JWKS does not load, or the address cannot be bound.
    pub async fn bind(mut self, addr: SocketAddr) -> std::io::Result<BoundServer> {
        let posture = self
            .security
            .posture(self.insecure_dev)
            .map_err(std::io::Error::other)?;
        let tls = if posture.plaintext {
            None
        } else {
            Some(ServerTls::load(&self.security).map_err(std::io::Error::other)?)
        };
        let authenticator = Arc::new(
            Authenticator::new(&self.security, posture.no_auth).map_err(std::io::Error::other)?,
        );
        if let Some(remote) = authenticator.remote_jwks() {
            // Fetched once before serving, so tokens are accepted from the first call when
            // the provider answers. When it does not, the service starts NOT_SERVING (this
            // check) and keeps trying: see `security::jwks`.
            let _ = remote.refresh().await;
            let remote = Arc::clone(remote);
            let check: Check = Arc::new(move || {
                let remote = Arc::clone(&remote);
                Box::pin(async move { remote.ready().await })
            });
            self.checks.push(("jwks", check));
        }
        let limits = limits::from_settings(&self.security.limits, posture.no_auth);
        // Started here rather than at run, so an HTTP port beside the server (intake's EIDO
        // port) records its refusals in the same trail through the same queue.
        let audit = self
            .audit
            .take()
            .map_or_else(AuditLayer::disabled, |(sink, settings)| {
                AuditLayer::start(sink, &settings, Arc::clone(&authenticator), &self.shutdown)
            });
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let admin = match self.admin {
            Some(admin) => Some(TcpListener::bind(admin).await.map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!("admin endpoint {admin} (RELAY_ADMIN_LISTEN): {error}"),
                )
            })?),
            None => None,
        };
        Ok(BoundServer {
            host: self,
            listener,
            local_addr,
            admin,
            posture,
            tls,
            authenticator,
            limits,
            audit,
        })
    }
}

/// A server with its listener bound, ready to run.
#[derive(Debug)]
pub struct BoundServer {
    host: ServiceHost,
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Option<TcpListener>,
    posture: Posture,
    tls: Option<Arc<ServerTls>>,
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<RateLimits>>,
    audit: AuditLayer,
}

#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    names: Arc<Vec<&'static str>>,
    /// Mirrors the SERVING state for the `relay_ready` gauge.
    ready: Arc<AtomicBool>,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        self.ready
            .store(status == ServingStatus::Serving, Ordering::Relaxed);
        self.reporter.set_service_status("", status).await;
        for name in self.names.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

impl BoundServer {
    /// The bound address (with the real port when 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, when it has one.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Whether the listener serves TLS (`false`: plaintext, development only).
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The security of an HTTP port beside this server (intake's EIDO port): the same TLS
    /// configuration (reloaded with this listener's), authenticator and rate limits.
    #[must_use]
    pub fn http_security(&self) -> crate::security::http::HttpSecurity {
        crate::security::http::HttpSecurity::new(
            self.tls.clone(),
            Arc::clone(&self.authenticator),
            self.limits.clone(),
            self.audit.clone(),
        )
    }

    /// The shutdown token of this server; see [`ServiceHost::shutdown_token`].
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.host.shutdown.clone()
    }

    /// Serves until `shutdown` completes (or the shutdown token is cancelled), then drains
    /// in-flight calls for at most the grace period.
    ///
    /// # Errors
    /// When reflection cannot be built or the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let Self {
            host,
            listener,
            local_addr,
            admin,
            posture,
            tls,
            authenticator,
            limits,
            audit,
        } = self;
        let ServiceHost {
            settings,
            mut routes,
            names,
            checks,
            shutdown: token,
            admin: _,
            security,
            insecure_dev: _,
            audit: _,
        } = host;
        for (insecure, what) in [
            (
                posture.plaintext,
                "serving plaintext gRPC (security.insecure_plaintext)",
            ),
            (
                posture.no_auth,
                "serving every caller without a credential (security.insecure_no_auth)",
            ),
        ] {
            if !insecure {
                continue;
            }
            if posture.explicit {
                tracing::warn!("{what}: development only, never in a deployment");
            } else {
                tracing::info!(
                    "{what}: RELAY_INSECURE_DEV is set and no TLS file or JWKS is configured"
                );
            }
        }

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let ready = Arc::new(AtomicBool::new(false));
        let service_label = names.first().copied().unwrap_or_default();
        let observed = Arc::clone(&ready);
        // The SDK keeps an observable gauge's callback for the provider's lifetime.
        let _ready_gauge = metrics::meter()
            .u64_observable_gauge("relay_ready")
            .with_description("1 while health is SERVING (dependencies reachable), else 0")
            .with_callback(move |gauge| {
                gauge.observe(
                    u64::from(observed.load(Ordering::Relaxed)),
                    &[opentelemetry::KeyValue::new("service", service_label)],
                );
            })
            .build();
        let _build_info = metrics::meter()
            .u64_observable_gauge("relay_build_info")
            .with_description("Always 1; its labels name the service and the build's version")
            .with_callback(move |gauge| {
                gauge.observe(
                    1,
                    &[
                        opentelemetry::KeyValue::new("service", service_label),
                        opentelemetry::KeyValue::new("version", env!("CARGO_PKG_VERSION")),
                    ],
                );
            })
            .build();
        let health = Health {
            reporter,
            names: Arc::new(names),
            ready,
        };
        health.set(ServingStatus::NotServing).await;
        if let Some(admin) = admin {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin endpoint serving /metrics, /readyz, /healthz");
            }
            tokio::spawn(metrics::serve_admin(
                admin,
                Arc::clone(&health.ready),
                token.clone().cancelled_owned(),
            ));
        }
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;

        // Reflection lists what this port serves, not every service in the descriptor set.
        let reflect = authenticator.reflection() != Reflection::Off;
        let listed: Vec<&str> = health
            .names
            .iter()
            .copied()
            .chain(
                HOSTED
                    .into_iter()
                    .filter(|name| reflect || !name.contains("reflection")),
            )
            .collect();
        let reflection = || {
            listed.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(relay_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        routes.add_service(health_service);
        if reflect {
            routes
                .add_service(reflection().build_v1()?)
                .add_service(reflection().build_v1alpha()?);
        }
        let served = health.names.join(", ");
        let routes = tonic::service::Routes::from(routes.routes().into_axum_router().fallback(
            move |request: http::Request<axum::body::Body>| {
                let (service, _) = crate::layers::rpc_names(request.uri().path());
                let message =
                    format!("{service} is not served on this port, which serves {served}");
                async move { tonic::Status::unimplemented(message).into_http::<axum::body::Body>() }
            },
        ));

        if let Some(remote) = authenticator.remote_jwks() {
            tokio::spawn(Arc::clone(remote).run(token.clone()));
        }
        if let Some(limits) = &limits {
            tokio::spawn(Arc::clone(limits).prune_task(token.clone()));
        }
        let readiness = tokio::spawn(readiness_task(
            health.clone(),
            checks,
            settings.clone(),
            token.clone(),
        ));

        let signal = {
            let token = token.clone();
            let health = health.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = token.cancelled() => {}
                }
                token.cancel();
                health.set(ServingStatus::NotServing).await;
                tracing::info!("draining in-flight calls");
            }
        };

        // TCP_NODELAY on the accepted connections themselves: the builder's own setting
        // applies only to listeners it binds. Without it a response written in two frames
        // (message, then trailers) waits for the client's delayed ACK, about 40 ms.
        let mut builder = Server::builder()
            .timeout(settings.request_timeout())
            .concurrency_limit_per_connection(settings.concurrency_limit_per_connection)
            .load_shed(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)));
        if let Some(age) = settings.max_connection_age() {
            builder = builder.max_connection_age(age);
        }
        tracing::info!(%local_addr, tls = tls.is_some(), mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()), "serving");
        let router = builder
            // Outermost first: the metrics see the code the caller gets, and a refused call
            // has its request id and span.
            .layer(MetricsLayer)
            .layer(RequestContextLayer)
            // Outside auth, to see its refusals; inside the context, for the call's ids.
            .layer(audit)
            .layer(AuthLayer::new(authenticator).with_refusal_limits(limits.clone()))
            // After auth: the caller is known, and its key is who it is.
            .layer(RateLimitLayer::new(limits))
            .add_routes(routes);
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                Some(tls) => {
                    tokio::spawn(
                        Arc::clone(&tls).watch(security.tls_reload_interval(), token.clone()),
                    );
                    let incoming = tls.incoming(listener, token.clone());
                    Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                }
                None => {
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                }
            };

        let grace = settings.shutdown_grace();
        let result = tokio::select! {
            result = server => result.map_err(BoxError::from),
            () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_seconds = grace.as_secs(), "graceful shutdown did not complete in time, terminating now");
                Ok(())
            }
        };
        readiness.abort();
        tracing::info!("stopped");
        result
    }
}

async fn run_checks(checks: &[(&'static str, Check)], timeout: Duration) -> Result<(), String> {
    for (name, check) in checks {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(timeout, check()).await;
        let result = match &outcome {
            Ok(Ok(())) => "ok",
            Ok(Err(_)) => "failed",
            Err(_) => "timeout",
        };
        metrics::record_check(name, started.elapsed().as_secs_f64(), result);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("{name}: {error}")),
            Err(_) => {
                return Err(format!(
                    "{name}: no answer within {}ms",
                    timeout.as_millis()
                ));
            }
        }
    }
    Ok(())
}

async fn readiness_task(
    health: Health,
    checks: Vec<(&'static str, Check)>,
    settings: ServerSettings,
    token: CancellationToken,
) {
    let interval = settings.readiness_interval();
    let timeout = interval.min(Duration::from_secs(2));
    let mut serving = false;
    let mut failures = 0_u32;
    loop {
        let result = run_checks(&checks, timeout).await;
        if token.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => {
                failures = 0;
                if !serving {
                    health.set(ServingStatus::Serving).await;
                    tracing::info!("ready: dependencies reachable, health SERVING");
                    serving = true;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if serving && failures >= settings.readiness_failure_threshold {
                    health.set(ServingStatus::NotServing).await;
                    tracing::warn!(%error, failures, "not ready: health NOT_SERVING");
                    serving = false;
                } else if !serving
                    && (failures == settings.readiness_failure_threshold
                        || (failures > settings.readiness_failure_threshold
                            && failures.is_multiple_of(30)))
                {
                    // Starting up takes a check or two (a roster to load): only a wait
                    // longer than the dampening is worth a warning.
                    tracing::warn!(%error, failures, "waiting for dependencies");
                } else if !serving {
                    tracing::debug!(%error, failures, "waiting for dependencies");
                }
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
