//! How to reach NATS: the server URLs with their credentials taken out,
//! credentials (user and password, a token, or a `.creds` file), TLS
//! (`tls://` URLs, a CA file), and what a failed connect means. Shared by
//! the service (`broker::connect`, at start on the main thread) and pusher.
//!
//! Invariant: no message made here holds a credential. URLs are shown only
//! through `redact`; secrets read from files or URLs live in the
//! `nats::Options` alone.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use std::io;
use std::path::{Path, PathBuf};

/// The settings as given: environment variables or flags of the same name.
#[derive(Debug, Clone, Default)]
pub struct NatsFiles<'a> {
    /// NATS_CREDS_FILE: a `.creds` file (user JWT and NKey seed).
    pub creds_file: Option<&'a Path>,
    /// NATS_PASSWORD_FILE: the password of the user named in NATS_URL.
    pub password_file: Option<&'a Path>,
    /// NATS_TOKEN_FILE: an authentication token.
    pub token_file: Option<&'a Path>,
    /// NATS_CA_FILE: the CA (PEM) that signed the servers' certificates.
    pub ca_file: Option<&'a Path>,
}

/// NATS credentials and CA as files (Kubernetes secrets), shared with
/// pusher, which takes the same flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsFileArgs {
    /// NATS .creds file (user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// File holding the NATS password of the user named in NATS_URL
    /// (nats://USER@host:4222).
    #[arg(long, env = "NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,

    /// File holding a NATS authentication token.
    #[arg(long, env = "NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,

    /// CA certificate (PEM) that signed the NATS servers' certificates;
    /// setting it asks for TLS.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
}

impl NatsFileArgs {
    pub fn files(&self) -> NatsFiles<'_> {
        NatsFiles {
            creds_file: self.nats_creds_file.as_deref(),
            password_file: self.nats_password_file.as_deref(),
            token_file: self.nats_token_file.as_deref(),
            ca_file: self.nats_ca_file.as_deref(),
        }
    }
}

/// Where and how to connect; made once, used for every connect.
#[derive(Clone)]
pub struct NatsTarget {
    /// The URLs without user information, as the client connects to them.
    urls: String,
    /// For messages: the URLs with any user information replaced by `***`.
    display: String,
    auth: Auth,
    ca_file: Option<PathBuf>,
    /// TLS asked for by the user (a `tls://` URL or a CA file), as opposed
    /// to demanded by a server.
    tls_configured: bool,
}

#[derive(Clone)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
    /// The `.creds` file's text (checked when read).
    Creds(String),
}

impl NatsTarget {
    /// Reads and checks every file now, so that a missing or malformed one
    /// ends start-up at once with its name. Errors never include a secret.
    pub fn new(urls: &str, files: &NatsFiles<'_>) -> Result<NatsTarget, String> {
        let display = redact(urls);
        let mut bare = Vec::new();
        let mut from_urls: Option<(String, Option<String>)> = None;
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (without, userinfo) = split_userinfo(url);
            if let Some(userinfo) = userinfo {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => {
                        (percent_decode(user), Some(percent_decode(password)))
                    }
                    None => (percent_decode(userinfo), None),
                };
                match &from_urls {
                    Some(seen) if *seen != (user.clone(), password.clone()) => {
                        return Err(format!(
                            "NATS_URL ({display}) gives different credentials for different \
                             servers: give them once"
                        ))
                    }
                    _ => from_urls = Some((user, password)),
                }
            }
            bare.push(without);
        }
        if bare.is_empty() {
            return Err("NATS_URL is empty".into());
        }
        let read = |what: &str, path: &Path| {
            std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let given = [files.creds_file, files.password_file, files.token_file]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given > 1 {
            return Err(
                "set at most one of NATS_CREDS_FILE, NATS_PASSWORD_FILE and NATS_TOKEN_FILE".into(),
            );
        }
        let auth = if let Some(path) = files.creds_file {
            // As written: the client's parser needs the newline after the
            // last `------END …------` line, which `read` would trim.
            let creds = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read NATS_CREDS_FILE {}: {e}", path.display()))?;
            // Parsed here for its error; parsed again by each connect.
            nats::Options::with_static_credentials(&creds).map_err(|e| {
                format!(
                    "NATS_CREDS_FILE {} is not a .creds file: {e}",
                    path.display()
                )
            })?;
            if from_urls.is_some() {
                return Err(
                    "NATS_CREDS_FILE is set and NATS_URL holds credentials too: keep one".into(),
                );
            }
            Auth::Creds(creds)
        } else if let Some(path) = files.password_file {
            let password = read("NATS_PASSWORD_FILE", path)?;
            match from_urls {
                Some((user, None)) => Auth::UserPassword(user, password),
                _ => {
                    return Err(format!(
                        "NATS_PASSWORD_FILE needs the user, and only the user, in NATS_URL \
                         (nats://USER@host:4222); NATS_URL is {display}"
                    ))
                }
            }
        } else if let Some(path) = files.token_file {
            if from_urls.is_some() {
                return Err(
                    "NATS_TOKEN_FILE is set and NATS_URL holds credentials too: keep one".into(),
                );
            }
            Auth::Token(read("NATS_TOKEN_FILE", path)?)
        } else {
            match from_urls {
                None => Auth::None,
                Some((user, Some(password))) => Auth::UserPassword(user, password),
                // nats://TOKEN@host, as the NATS clients read it.
                Some((token, None)) => Auth::Token(token),
            }
        };
        if let Some(path) = files.ca_file {
            let pem = read("NATS_CA_FILE", path)?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "NATS_CA_FILE {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        let tls_configured =
            files.ca_file.is_some() || bare.iter().any(|url| url.starts_with("tls://"));
        Ok(NatsTarget {
            urls: bare.join(","),
            display,
            auth,
            ca_file: files.ca_file.map(Path::to_path_buf),
            tls_configured,
        })
    }

    /// The URLs to connect to (no credentials in them).
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// The URLs for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Options carrying the credentials and the CA; the caller adds its
    /// name, callbacks and reconnect policy.
    pub fn options(&self) -> io::Result<nats::Options> {
        let options = match &self.auth {
            Auth::None => nats::Options::new(),
            Auth::UserPassword(user, password) => nats::Options::with_user_pass(user, password),
            Auth::Token(token) => nats::Options::with_token(token),
            Auth::Creds(creds) => nats::Options::with_static_credentials(creds)?,
        };
        Ok(match &self.ca_file {
            // The CA alone asks for TLS, whatever the URL's scheme.
            Some(path) => options.add_root_certificate(path).tls_required(true),
            None => options,
        })
    }

    /// Connects with `options` (from `options()`), sorting a failure into one
    /// that waiting may cure and one that it cannot.
    pub fn connect(&self, options: nats::Options) -> Result<nats::Connection, ConnectError> {
        options
            .connect(self.urls.as_str())
            .map_err(|err| self.judge(&err))
    }

    /// One line naming the servers and the cause, with what to change.
    pub fn judge(&self, err: &io::Error) -> ConnectError {
        let text = err.to_string();
        let lower = text.to_ascii_lowercase();
        let at = &self.display;
        let permanent = |why: String| ConnectError::Permanent(format!("NATS at {at}: {why}"));
        if lower.contains("authorization violation") || lower.contains("authentication") {
            let what = match self.auth {
                Auth::None => {
                    "the server requires credentials and none are set: put user and \
                               password in NATS_URL or set NATS_PASSWORD_FILE, NATS_TOKEN_FILE or \
                               NATS_CREDS_FILE"
                }
                _ => "the server refused the credentials (wrong user, password, token or .creds)",
            };
            return permanent(format!("{what} ({text})"));
        }
        if text.starts_with("TLS error") || lower.contains("certificate") {
            let advice = if lower.contains("unknownissuer") || lower.contains("badsignature") {
                if self.ca_file.is_some() {
                    "its certificate is not signed by the CA in NATS_CA_FILE"
                } else if self.tls_configured {
                    "its certificate is not signed by a CA the system trusts: set NATS_CA_FILE"
                } else {
                    "the server requires TLS and its certificate is not signed by a CA the \
                     system trusts: set NATS_CA_FILE to the CA that signed it"
                }
            } else if lower.contains("notvalidforname") {
                "its certificate does not name the host in NATS_URL"
            } else if self.tls_configured {
                "the TLS handshake failed: does the server have TLS enabled?"
            } else {
                "the TLS handshake failed"
            };
            return permanent(format!("{advice} ({text})"));
        }
        if err.kind() == io::ErrorKind::InvalidInput {
            return permanent(text);
        }
        if err.kind() == io::ErrorKind::InvalidData && !text.starts_with("unexpected line") {
            // Bytes that are not NATS: a `tls://` URL on a server without
            // TLS answers the TLS hello with a plain -ERR.
            return permanent(format!(
                "the server's answer is not what the client expects ({text}): a tls:// URL or \
                 NATS_CA_FILE for a server without TLS?"
            ));
        }
        ConnectError::Transient(format!("NATS at {at}: {text}"))
    }
}

/// A failed connect, described without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The server is down, starting, unreachable: worth waiting for.
    Transient(String),
    /// Credentials refused, certificate not trusted, TLS mismatch, bad URL:
    /// a person must change a setting.
    Permanent(String),
}

impl ConnectError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ConnectError::Permanent(_))
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Transient(text) | ConnectError::Permanent(text) => f.write_str(text),
        }
    }
}

/// A URL list with every user information (user, password or token)
/// replaced by `***`: `nats://***@host:4222`. Works on any text, valid URL
/// or not.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| match split_userinfo(url.trim()) {
            (without, Some(_)) => match without.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://***@{rest}"),
                None => format!("***@{without}"),
            },
            (without, None) => without,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `nats://user:pass@host:4222` → (`nats://host:4222`, Some("user:pass")).
fn split_userinfo(url: &str) -> (String, Option<&str>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let host_and_path = &rest[at + 1..];
            let without = match scheme {
                Some(scheme) => format!("{scheme}://{host_and_path}"),
                None => host_and_path.to_owned(),
            };
            (without, Some(&authority[..at]))
        }
        None => (url.to_owned(), None),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digit = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], digit(i + 1), digit(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_every_kind_of_user_information() {
        assert_eq!(
            redact("nats://orders:s3cret@a:4222,tls://TOKEN@b:4222,c:4222"),
            "nats://***@a:4222,tls://***@b:4222,c:4222"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("u:p@host"), "***@host");
        // An @ in a password, unencoded: the last @ of the authority counts.
        assert_eq!(redact("nats://u:p@ss@h:1"), "nats://***@h:1");
    }

    #[test]
    fn credentials_leave_the_urls_and_are_decoded() {
        let target = NatsTarget::new(
            "nats://orders:p%40ss@a:4222, nats://orders:p%40ss@b:4222",
            &NatsFiles::default(),
        )
        .unwrap();
        assert_eq!(target.urls(), "nats://a:4222,nats://b:4222");
        assert!(matches!(&target.auth, Auth::UserPassword(u, p) if u == "orders" && p == "p@ss"));
        assert!(!target.display().contains("p%40ss"));
        let token = NatsTarget::new("nats://tok@a:4222", &NatsFiles::default()).unwrap();
        assert!(matches!(&token.auth, Auth::Token(t) if t == "tok"));
    }

    #[test]
    fn conflicting_or_missing_settings_are_refused_without_secrets() {
        let err = NatsTarget::new("nats://u:one@a,nats://u:two@b", &NatsFiles::default())
            .err()
            .unwrap();
        assert!(!err.contains("one") && !err.contains("two"), "{err}");
        let missing = NatsFiles {
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            ..NatsFiles::default()
        };
        let err = NatsTarget::new("nats://u:secret@a", &missing)
            .err()
            .unwrap();
        assert!(
            err.contains("/nonexistent/ca.pem") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn failures_are_sorted() {
        let target = NatsTarget::new("nats://u:secret@a:4222", &NatsFiles::default()).unwrap();
        let auth = io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected line while connecting: Err(\"Authorization Violation\")",
        );
        let judged = target.judge(&auth);
        assert!(judged.is_permanent(), "{judged}");
        assert!(!judged.to_string().contains("secret"));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!target.judge(&refused).is_permanent());
        let full = io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected line while connecting: Err(\"maximum connections exceeded\")",
        );
        assert!(!target.judge(&full).is_permanent());
        let tls = io::Error::other("TLS error: invalid peer certificate: UnknownIssuer");
        let judged = target.judge(&tls);
        assert!(judged.is_permanent() && judged.to_string().contains("NATS_CA_FILE"));
    }
}
