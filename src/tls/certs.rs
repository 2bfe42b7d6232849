//! Certificate and key loading, and the rustls configuration built from them.
//!
//! Loading happens at start and on every reload (`SIGHUP`), off the hot
//! path: read the PEM chain and key, check that the key matches the
//! certificate (one clear error if not), warn if the leaf has expired (an
//! expired certificate is still served: the operator may be mid-renewal),
//! and build a [`rustls::ServerConfig`]. The configuration every worker uses
//! sits behind a [`TlsHandle`] that a reload swaps atomically; connections
//! take the current one at accept and keep it for their lifetime.
//!
//! What stays the same across reloads ([`TlsState`]): the session-ticket
//! key rotator and the session cache, so a certificate swap does not throw
//! away resumable sessions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ALPN_PROTOCOLS;

/// Sessions kept for ID-based resumption (TLS 1.2 clients without tickets),
/// per process: bounded, least recently used out first. About 200 bytes each.
pub const SESSION_CACHE_ENTRIES: usize = 4096;
/// TLS 1.3 tickets sent after each full handshake: one is enough for a
/// client to resume, and each costs an encryption on the handshake path.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// Why a certificate or key could not be used.
#[derive(Debug)]
pub enum CertError {
    Read {
        path: PathBuf,
        error: String,
    },
    NoCertificate(PathBuf),
    NoKey {
        path: PathBuf,
        error: String,
    },
    /// The key is of a kind rustls cannot sign with.
    UnsupportedKey {
        path: PathBuf,
        error: String,
    },
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
    },
    Config(String),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            CertError::NoCertificate(path) => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            CertError::NoKey { path, error } => write!(
                f,
                "{} holds no usable PEM private key (PKCS#8, RSA or SEC1): {error}",
                path.display()
            ),
            CertError::UnsupportedKey { path, error } => {
                write!(f, "the key in {} cannot be used: {error}", path.display())
            }
            CertError::KeyMismatch { cert, key } => write!(
                f,
                "the key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
            CertError::Config(error) => write!(f, "TLS configuration failed: {error}"),
        }
    }
}

impl std::error::Error for CertError {}

/// Where the certificate chain and key are read from (again on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate chain with its key, checked to match.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, in seconds since the epoch, if it could be read.
    pub not_after: Option<i64>,
}

impl LoadedCert {
    /// Whether the leaf certificate's validity ended before `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.not_after.is_some_and(|end| end < now)
    }
}

/// The crypto provider: *ring* (builds with the base toolchain: no cmake,
/// no nasm), rustls' safe default TLS 1.3 and 1.2 cipher suites (AEADs with
/// forward secrecy only), AES-128-GCM first: as safe as AES-256 for TLS and
/// cheaper per byte, and the suite the benchmarks compare on (the server's
/// order decides, see [`TlsState::server_config`]).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as Suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        matches!(
            suite.suite(),
            Suite::TLS13_AES_256_GCM_SHA384
                | Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    Arc::new(provider)
}

/// Reads and checks `paths`.
pub fn load_cert(paths: &CertPaths) -> Result<LoadedCert, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| CertError::Read {
            path: path.to_owned(),
            error: e.to_string(),
        })
    };
    let cert_pem = read(&paths.cert)?;
    let key_pem = read(&paths.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Read {
            path: paths.cert.clone(),
            error: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(paths.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::NoKey {
        path: paths.key.clone(),
        error: e.to_string(),
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnsupportedKey {
            path: paths.key.clone(),
            error: e.to_string(),
        })?;
    let not_after = leaf_not_after(&chain[0]);
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            });
        }
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
    })
}

/// What outlives a certificate: the ticket keys (rotated every six hours by
/// rustls' rotator, the previous key still accepted) and the session cache.
#[derive(Clone)]
pub struct TlsState {
    /// `None`: no resumption at all (for measuring full handshakes).
    resumption: Option<(Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>)>,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsState")
    }
}

impl TlsState {
    pub fn new() -> Result<TlsState, CertError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| CertError::Config(e.to_string()))?;
        let cache: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        Ok(TlsState {
            resumption: Some((ticketer, cache)),
        })
    }

    /// No tickets and no session cache: every handshake is a full one (a
    /// switch for measuring them; clients such as wrk resume otherwise).
    pub fn without_resumption() -> TlsState {
        TlsState { resumption: None }
    }

    /// The server configuration for `cert`.
    pub fn server_config(&self, cert: &LoadedCert) -> Result<Arc<ServerConfig>, CertError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(Arc::clone(
                &cert.key,
            ))));
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        match &self.resumption {
            Some((ticketer, cache)) => {
                config.ticketer = Arc::clone(ticketer);
                config.session_storage = Arc::clone(cache);
                config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
            }
            None => {
                // The builder's default ticketer issues none.
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
        }
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// The current TLS configuration, shared by every worker, replaceable
/// atomically (a reload); plus where it was loaded from.
#[derive(Clone)]
pub struct TlsHandle {
    current: Arc<ArcSwap<ServerConfig>>,
    state: TlsState,
    paths: Option<CertPaths>,
}

impl fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHandle").field("paths", &self.paths).finish()
    }
}

impl TlsHandle {
    /// Loads `paths` (a start: the caller reports the error and exits).
    /// Returns the handle and whether the certificate has expired.
    pub fn load(paths: &CertPaths) -> Result<(TlsHandle, LoadedCert), CertError> {
        TlsHandle::load_with(paths, TlsState::new()?)
    }

    /// [`TlsHandle::load`] with `state` (resumption on or off).
    pub fn load_with(paths: &CertPaths, state: TlsState) -> Result<(TlsHandle, LoadedCert), CertError> {
        let cert = load_cert(paths)?;
        let config = state.server_config(&cert)?;
        let handle = TlsHandle {
            current: Arc::new(ArcSwap::new(config)),
            state,
            paths: Some(paths.clone()),
        };
        Ok((handle, cert))
    }

    /// A handle serving `cert` (tests, embedders): no files to reload from.
    pub fn from_cert(cert: &LoadedCert) -> Result<TlsHandle, CertError> {
        let state = TlsState::new()?;
        let config = state.server_config(cert)?;
        Ok(TlsHandle {
            current: Arc::new(ArcSwap::new(config)),
            state,
            paths: None,
        })
    }

    /// A handle serving `config` as it is (tests, embedders).
    pub fn from_config(config: Arc<ServerConfig>) -> TlsHandle {
        TlsHandle {
            current: Arc::new(ArcSwap::new(config)),
            state: TlsState::without_resumption(),
            paths: None,
        }
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the certificate and key again: on success they serve every
    /// connection accepted from now on; on failure the old ones stay.
    /// (Reloading a handle made with [`TlsHandle::from_cert`] keeps it.)
    pub fn prepare_reload(&self) -> Result<Option<(Arc<ServerConfig>, LoadedCert)>, CertError> {
        let Some(paths) = &self.paths else {
            return Ok(None);
        };
        let cert = load_cert(paths)?;
        let config = self.state.server_config(&cert)?;
        Ok(Some((config, cert)))
    }

    /// Makes `config` current.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.current.store(config);
    }
}

/// The `notAfter` of an X.509 certificate (seconds since the epoch), read
/// with a minimal DER walk: Certificate → TBSCertificate → (version?,
/// serial, signature, issuer, validity → notBefore, notAfter). `None` if
/// the structure is not as expected (rustls still validates what it sends).
fn leaf_not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der_element(cert)?;
    let (_, tbs, _) = der_element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, after_not_before) = {
        let (_, _, after) = der_element(validity)?;
        ((), after)
    };
    let (tag, time, _) = der_element(after_not_before)?;
    parse_der_time(tag, time)
}

/// One DER element: `(tag, contents, rest)`.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, tag 0x18) → seconds since the epoch.
fn parse_der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match tag {
        0x17 if text.len() >= 12 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() >= 14 => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_every_suite_is_an_aead_with_forward_secrecy() {
        let suites: Vec<String> = provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(suites[0], "TLS13_AES_128_GCM_SHA256", "{suites:?}");
        assert!(
            suites
                .iter()
                .all(|s| s.starts_with("TLS13_") || s.starts_with("TLS_ECDHE_")),
            "{suites:?}"
        );
        assert!(
            suites.iter().all(|s| s.contains("GCM") || s.contains("CHACHA20")),
            "{suites:?}"
        );
    }

    #[test]
    fn der_times() {
        assert_eq!(parse_der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_der_time(0x18, b"20260101000000Z"), Some(1_767_225_600));
        assert_eq!(parse_der_time(0x17, b"70x101000000Z"), None);
        assert_eq!(parse_der_time(0x05, b""), None);
    }

    #[test]
    fn der_elements_refuse_truncation() {
        assert_eq!(
            der_element(&[0x30, 0x02, 1, 2, 3]),
            Some((0x30, &[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(der_element(&[0x30, 0x05, 1]), None);
        assert_eq!(der_element(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_element(&[]), None);
        assert_eq!(leaf_not_after(b"garbage"), None);
    }
}
