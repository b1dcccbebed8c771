//! HTTPS for `gitfleet serve`: rustls over the TCP listener, with the
//! certificate chain and key read from PEM files and read again when either
//! file's contents change (a renewed certificate is served without a restart; one
//! that does not load is logged and the last good one stays).
//!
//! Handshakes run in tasks of their own, so a client that stalls its
//! handshake holds up nobody else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The files are looked at again at most this often.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a client may take over its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const QUEUE: usize = 64;

/// Handshakes at once: more connections wait to be accepted.
const HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{key} is not the key of the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// What a file holds, as a hash: a new certificate moved or written into
/// place changes it, whatever the file system's timestamps can tell (the
/// files are a few KiB, read once a second at most).
type Stamp = Option<u64>;

fn stamp(path: &Path) -> Stamp {
    use std::hash::{Hash as _, Hasher as _};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Read the chain and key and check that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(pair)
}

/// The certificate to present: the files' as last loaded, read again when
/// they change.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    current: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
    checked: Instant,
}

impl CertFiles {
    /// Load the files now: a server that cannot present a certificate
    /// does not start.
    pub fn open(cert: &Path, key: &Path) -> Result<CertFiles, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let current = Arc::new(load(cert, key)?);
        Ok(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(Loaded {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to present now. The files are looked at outside
    /// the lock, by one handshake a second at most.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let (current, stamps) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.checked.elapsed() < RECHECK {
                return Arc::clone(&s.current);
            }
            s.checked = Instant::now();
            (Arc::clone(&s.current), s.stamps)
        };
        let now = (stamp(&self.cert), stamp(&self.key));
        if now == stamps {
            return current;
        }
        match load(&self.cert, &self.key) {
            Ok(k) => {
                tracing::info!(cert = %self.cert.display(), "serving the certificate as changed on disk");
                let k = Arc::new(k);
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.current = Arc::clone(&k);
                s.stamps = now;
                k
            }
            // Half-written, or a key not yet swapped with its certificate:
            // try again at the next check.
            Err(e) => {
                tracing::warn!(error = %gitfleet_io::error_chain(&e), "the changed certificate does not load; serving the last good one");
                current
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server's TLS settings over `certs`.
pub fn acceptor(certs: Arc<CertFiles>) -> TlsAcceptor {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| {
                rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("ring supports TLS 1.3")
            })
            .with_no_client_auth()
            .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// A listener that hands axum connections after their TLS handshake.
pub struct TlsListener {
    local: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(QUEUE);
        let handshaking = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                // A flood of connections waits here, not in open sockets.
                let Ok(permit) = Arc::clone(&handshaking).acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, most likely: let some go.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (it never does on its own): wait
            // for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_wrong_files_are_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = load(&cert, &key).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(format!("reading {}", cert.display()).as_str())
        );
        std::fs::write(&cert, "not pem").unwrap_or_else(|e| panic!("{e}"));
        let e = load(&cert, &key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }
}
