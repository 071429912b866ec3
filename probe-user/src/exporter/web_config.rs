//! `export --web.config.file FILE`: TLS and basic auth in the format of the
//! Prometheus exporter toolkit (node_exporter's `--web.config.file`), so
//! one file and one habit serve every exporter on a host.
//!
//! Read once at start; every problem is one line naming the key. Keys the
//! toolkit has but mmapwatch cannot honour are refused, not ignored: a
//! setting that silently does nothing is worse than none.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    server::WebPkiClientVerifier, version::TLS12, version::TLS13, RootCertStore, ServerConfig,
    SupportedProtocolVersion,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::basic_auth::BasicAuth;

/// What the file asks for.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub basic_auth: Option<Arc<BasicAuth>>,
}

#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {}: {why}", .path.display())]
pub struct WebConfigError {
    path: PathBuf,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    tls_server_config: Option<TlsForm>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    http_server_config: Option<HttpForm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsForm {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Known to the toolkit, not honoured here: refused by name.
    cipher_suites: Option<serde::de::IgnoredAny>,
    curve_preferences: Option<serde::de::IgnoredAny>,
    client_allowed_sans: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpForm {
    /// mmapwatch serves HTTP/1.1; `false` is what it does anyway.
    http2: Option<bool>,
    headers: Option<serde::de::IgnoredAny>,
}

/// Reads and checks FILE; builds the TLS configuration and the users.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let fail = |why: String| WebConfigError {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|err| fail(err.to_string()))?;
    parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(fail)
}

/// The file's text; relative paths in it are relative to `dir`, the
/// file's own directory, as the toolkit has them.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, String> {
    // An empty file is a valid configuration: nothing asked for.
    let form: FileForm = if text.trim().is_empty() {
        FileForm {
            tls_server_config: None,
            basic_auth_users: BTreeMap::new(),
            http_server_config: None,
        }
    } else {
        serde_saphyr::from_str(text).map_err(|err| first_line(&err.to_string()))?
    };
    if let Some(http) = &form.http_server_config {
        if http.headers.is_some() {
            return Err("http_server_config.headers is not supported by mmapwatch".into());
        }
        if http.http2 == Some(true) {
            return Err("http_server_config.http2: mmapwatch serves HTTP/1.1 only".into());
        }
    }
    let tls = form
        .tls_server_config
        .map(|tls| server_config(tls, dir).map(Arc::new))
        .transpose()?;
    let basic_auth = if form.basic_auth_users.is_empty() {
        None
    } else {
        Some(Arc::new(BasicAuth::new(form.basic_auth_users)?))
    };
    Ok(WebConfig { tls, basic_auth })
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("not valid YAML")
        .to_string()
}

fn server_config(form: TlsForm, dir: &Path) -> Result<ServerConfig, String> {
    for (present, key) in [
        (form.cipher_suites.is_some(), "cipher_suites"),
        (form.curve_preferences.is_some(), "curve_preferences"),
        (form.client_allowed_sans.is_some(), "client_allowed_sans"),
    ] {
        if present {
            return Err(format!(
                "tls_server_config.{key} is not supported by mmapwatch (rustls offers only its own safe choices)"
            ));
        }
    }
    let versions = versions(form.min_version.as_deref(), form.max_version.as_deref())?;
    let client_auth = form.client_auth_type.as_deref().unwrap_or("NoClientCert");
    match client_auth {
        "NoClientCert" | "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {}
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(format!(
                "tls_server_config.client_auth_type {client_auth} accepts unverified certificates: not supported (use RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
            ))
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type '{other}' is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ))
        }
    }
    let certs = pem_source(dir, form.cert_file, form.cert, "cert")?;
    let certs: Vec<CertificateDer<'static>> = match &certs {
        PemSource::File(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|err| format!("tls_server_config.cert_file {}: {err}", path.display()))?,
        PemSource::Inline(text) => CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|err| format!("tls_server_config.cert: {err}"))?,
    };
    if certs.is_empty() {
        return Err("tls_server_config: no certificate in the cert PEM".into());
    }
    let key = match pem_source(dir, form.key_file, form.key, "key")? {
        PemSource::File(path) => PrivateKeyDer::from_pem_file(&path)
            .map_err(|err| format!("tls_server_config.key_file {}: {err}", path.display()))?,
        PemSource::Inline(text) => PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|err| format!("tls_server_config.key: {err}"))?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|err| format!("tls_server_config: {err}"))?;
    let builder = match client_auth {
        "NoClientCert" => {
            if form.client_ca_file.is_some() || form.client_ca.is_some() {
                return Err(
                    "tls_server_config: a client CA is given but client_auth_type is NoClientCert"
                        .into(),
                );
            }
            builder.with_no_client_auth()
        }
        _ => {
            let ca = pem_source(dir, form.client_ca_file, form.client_ca, "client_ca")?;
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> = match &ca {
                PemSource::File(path) => CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect())
                    .map_err(|err| {
                        format!("tls_server_config.client_ca_file {}: {err}", path.display())
                    })?,
                PemSource::Inline(text) => CertificateDer::pem_slice_iter(text.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|err| format!("tls_server_config.client_ca: {err}"))?,
            };
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|err| format!("tls_server_config: client CA: {err}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if client_auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|err| format!("tls_server_config: client CA: {err}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("tls_server_config: the certificate and key: {err}"))?;
    config.ignore_client_order = form.prefer_server_cipher_suites.unwrap_or(true);
    Ok(config)
}

enum PemSource {
    File(PathBuf),
    Inline(String),
}

/// `NAME_file` or inline `NAME` (exactly one).
fn pem_source(
    dir: &Path,
    file: Option<PathBuf>,
    inline: Option<String>,
    name: &str,
) -> Result<PemSource, String> {
    match (file, inline) {
        (Some(file), None) => Ok(PemSource::File(dir.join(file))),
        (None, Some(text)) => Ok(PemSource::Inline(text)),
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: {name} and {name}_file are both given"
        )),
        (None, None) => Err(format!(
            "tls_server_config: {name}_file (or {name}) is required"
        )),
    }
}

fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |text: &str, key: &str| match text {
        "TLS12" => Ok(0),
        "TLS13" => Ok(1),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{key} {text}: only TLS12 and TLS13 are offered"
        )),
        other => Err(format!(
            "tls_server_config.{key} '{other}' is not TLS12 or TLS13"
        )),
    };
    // The toolkit's default minimum is TLS 1.2.
    let low = min.map_or(Ok(0), |v| rank(v, "min_version"))?;
    let high = max.map_or(Ok(1), |v| rank(v, "max_version"))?;
    if low > high {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok([&TLS12, &TLS13][low..=high].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match parse(text, Path::new("/nonexistent")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(why) => why,
        }
    }

    #[test]
    fn an_empty_file_asks_for_nothing() {
        let config = parse("", Path::new(".")).unwrap();
        assert!(config.tls.is_none() && config.basic_auth.is_none());
    }

    #[test]
    fn unknown_and_unhonoured_keys_are_refused_by_name() {
        assert!(refused("tls_server_confg: {}\n").contains("tls_server_confg"));
        assert!(refused(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        )
        .contains("cipher_suites"));
        assert!(
            refused("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
                .contains("headers")
        );
        assert!(refused("tls_server_config:\n  key_file: b\n").contains("cert_file"));
        assert!(refused(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n"
        )
        .contains("unverified"));
        assert!(refused(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n"
        )
        .contains("TLS12 and TLS13"));
    }

    #[test]
    fn passwords_must_be_bcrypt_hashes() {
        assert!(refused("basic_auth_users:\n  alice: plaintext\n").contains("alice"));
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let why = refused("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
        assert!(why.contains("/nonexistent/server.crt"), "{why}");
    }

    #[test]
    fn versions_follow_min_and_max() {
        assert_eq!(versions(None, None).unwrap().len(), 2);
        assert_eq!(versions(Some("TLS13"), None).unwrap(), vec![&TLS13]);
        assert!(versions(Some("TLS13"), Some("TLS12")).is_err());
    }
}
