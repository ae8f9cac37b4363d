//! TLS on the gRPC listener (rustls, ring provider), reloaded when its files change, and the
//! identity of a client certificate.
//!
//! The server configuration (certificate chain, key, and the client CA when mTLS is on) is
//! built from files. A watcher polls their modification times; when one changes, a new
//! configuration is built and swapped in: new connections get the new certificate, open
//! connections (and their streams) keep the one they were made with. A file that does not
//! load (half-written, wrong key) leaves the previous configuration in place, with a warning.
//!
//! Handshakes run beside the accept loop, each within [`HANDSHAKE_TIMEOUT`], so a slow or
//! hostile client cannot hold up others.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::SecuritySettings;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity of a client certificate: its SPIFFE URI SAN, else its subject CN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// The identity of the verified client certificate of the connection a request came on.
#[must_use]
pub fn peer_identity(extensions: &http::Extensions) -> Option<PeerIdentity> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    identity_of(certs.first()?.as_ref()).map(PeerIdentity)
}

/// The identity in a certificate (DER): the first `spiffe://` URI SAN, else the subject CN.
#[must_use]
pub fn identity_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                return Some((*uri).to_owned());
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, variable: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| format!("{} ({variable}): {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} ({variable}) holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path, variable: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The error names the file, never its content.
    PrivateKeyDer::from_pem_file(path).map_err(|error| {
        format!(
            "{} ({variable}): no usable PEM private key: {error}",
            path.display()
        )
    })
}

/// A root store with the certificates of the PEM file at `path`.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn root_store(path: &Path, variable: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, variable)? {
        roots
            .add(cert)
            .map_err(|error| format!("{} ({variable}): {error}", path.display()))?;
    }
    Ok(roots)
}

#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }

    /// The modification time and length of each file: a change in either is a new file.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .into_iter()
            .map(|path| {
                std::fs::metadata(path)
                    .ok()
                    .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
            })
            .collect()
    }

    fn load(&self) -> Result<ServerConfig, String> {
        let certs = read_certs(&self.cert, "RELAY_TLS_CERT")?;
        let key = read_key(&self.key, "RELAY_TLS_KEY")?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?;
        let builder = match &self.client_ca {
            Some(path) => {
                let roots = root_store(path, "RELAY_TLS_CLIENT_CA")?;
                // A certificate is optional (a caller may use a token instead); one that
                // does not chain to this CA fails the handshake.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| {
                            format!("{} (RELAY_TLS_CLIENT_CA): {error}", path.display())
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|error| {
            format!(
                "{} and {} (RELAY_TLS_CERT, RELAY_TLS_KEY): {error}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The application protocols a TLS listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` only: a gRPC listener.
    Grpc,
    /// `http/1.1` only: an HTTP/JSON port.
    Http1,
}

impl Alpn {
    /// `config` offering these protocols (a copy when they differ from the files' `h2`).
    fn apply(self, config: Arc<ServerConfig>) -> Arc<ServerConfig> {
        match self {
            Self::Grpc => config,
            Self::Http1 => {
                let mut config = (*config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            }
        }
    }
}

/// The server's current TLS configuration, swapped when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: Files,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate, key and client CA of `settings`.
    ///
    /// # Errors
    /// When a file is missing or does not load.
    pub fn load(settings: &SecuritySettings) -> Result<Arc<Self>, String> {
        let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
            return Err(String::from(
                "TLS needs `security.tls_cert` and `security.tls_key` (RELAY_TLS_CERT, RELAY_TLS_KEY)",
            ));
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: settings.tls_client_ca.clone(),
        };
        let config = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Whether client certificates are asked for (mTLS).
    #[must_use]
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn swap(&self, config: ServerConfig) {
        let config = Arc::new(config);
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// Polls the files every `interval` until `token` is cancelled, reloading on change.
    pub async fn watch(self: Arc<Self>, interval: Duration, token: CancellationToken) {
        let mut seen = self.files.stamp();
        let mut refused = None;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let stamp = self.files.stamp();
            if stamp == seen || refused.as_ref() == Some(&stamp) {
                continue;
            }
            match self.files.load() {
                Ok(config) => {
                    self.swap(config);
                    seen = stamp;
                    refused = None;
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        "tls certificate reloaded: new connections use it"
                    );
                }
                Err(error) => {
                    // Likely half-written (a certificate before its key): tried again when
                    // the files change again; the previous configuration stays.
                    tracing::warn!(%error, "tls files changed but do not load, keeping the previous certificate");
                    refused = Some(stamp);
                }
            }
        }
    }

    /// The stream of TLS connections accepted on `listener` until `token` is cancelled.
    #[must_use]
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        token: CancellationToken,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
        self.incoming_with_alpn(listener, token, Alpn::Grpc)
    }

    /// As [`Self::incoming`], offering `alpn`: an HTTP/1.1 port (intake's EIDO) shares the
    /// certificate, its reloads and the client CA of the gRPC listener, but not its `h2`.
    #[must_use]
    pub fn incoming_with_alpn(
        self: Arc<Self>,
        listener: TcpListener,
        token: CancellationToken,
        alpn: Alpn,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // TCP_NODELAY, as on the plaintext listener: see `server.rs`.
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(alpn.apply(self.current()));
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "tls handshake refused");
                        }
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// The TLS settings of a client channel to another Relay service, from `settings`: the CA
/// it trusts and its own client certificate. `None` when `tls_ca` is unset (plaintext).
///
/// # Errors
/// When a file cannot be read.
pub fn client_tls(
    settings: &SecuritySettings,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let Some(ca) = &settings.tls_ca else {
        return Ok(None);
    };
    let read = |path: &Path, variable: &str| {
        std::fs::read(path).map_err(|error| format!("{} ({variable}): {error}", path.display()))
    };
    let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read(ca, "RELAY_SECURITY__TLS_CA")?),
    );
    if let (Some(cert), Some(key)) = (&settings.tls_client_cert, &settings.tls_client_key) {
        config = config.identity(tonic::transport::Identity::from_pem(
            read(cert, "RELAY_SECURITY__TLS_CLIENT_CERT")?,
            read(key, "RELAY_SECURITY__TLS_CLIENT_KEY")?,
        ));
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pki::Authority;

    #[test]
    fn a_client_identity_is_its_spiffe_uri_else_its_common_name() {
        let authority = Authority::new("test CA").expect("CA");
        let der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .expect("pem")
                .to_vec()
        };
        let spiffe = authority
            .client("spiffe://relay.test/intake")
            .expect("cert");
        assert_eq!(
            identity_of(&der(&spiffe.cert_pem)).as_deref(),
            Some("spiffe://relay.test/intake")
        );
        let named = authority.client("cad-adapter").expect("cert");
        assert_eq!(
            identity_of(&der(&named.cert_pem)).as_deref(),
            Some("cad-adapter")
        );
    }
}
