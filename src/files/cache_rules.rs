//! Cache policy and extra headers: which `Cache-Control` and which additional
//! header lines each file's heads carry. Decided once per file at load time
//! and rendered into its precomputed heads.
//!
//! `Cache-Control`, first match wins:
//! 1. the last rule of the config file whose glob matches the file and that
//!    sets `cache_control`;
//! 2. HTML: `no-cache` (pages must be revalidated, or a deploy is invisible
//!    until caches expire);
//! 3. a file whose name carries a content hash ([`has_content_hash`], e.g.
//!    `app.3f9a2c1b.js`): `public, max-age=31536000, immutable` (a new build
//!    gives it a new name);
//! 4. the default: `--cache-control`, else the config file's top-level
//!    `cache_control`, else [`DEFAULT_CACHE_CONTROL`].
//!
//! Extra headers: every rule whose glob matches adds its `headers`, in file
//! order; a later rule's value for the same name replaces an earlier one.
//!
//! The config file (`--config FILE`, TOML):
//! ```toml
//! cache_control = "public, max-age=3600"   # the default for ordinary files
//!
//! [[rules]]
//! glob = "**"                             # every file
//! headers = { X-Content-Type-Options = "nosniff", X-Frame-Options = "DENY" }
//!
//! [[rules]]
//! glob = "fonts/**"
//! cache_control = "public, max-age=604800"
//! headers = { Access-Control-Allow-Origin = "*" }
//! ```
//! Globs (the `globset` crate) match the path relative to the root without a
//! leading slash (`css/site.css`); `*` does not cross `/`, `**` does, so
//! `**/*.css` matches CSS files at any depth, `index.html` included at the top.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// `Cache-Control` for ordinary files when neither the command line nor the
/// config file says otherwise: always revalidate (cheap, with a strong
/// `ETag`), never serve stale. Safer than sending nothing, which lets
/// browsers guess a freshness lifetime from `Last-Modified`.
pub const DEFAULT_CACHE_CONTROL: &str = "no-cache";
/// For HTML.
pub const HTML_CACHE_CONTROL: &str = "no-cache";
/// For names that carry a content hash.
pub const HASHED_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Header names the server owns: a rule may not set them.
const RESERVED_HEADERS: [&str; 14] = [
    "accept-ranges",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "keep-alive",
    "last-modified",
    "server",
    "transfer-encoding",
    "vary",
];

#[derive(Debug)]
pub enum ConfigError {
    Read(PathBuf, std::io::Error),
    Parse(PathBuf, String),
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(path, e) => write!(f, "cannot read config file {}: {e}", path.display()),
            ConfigError::Parse(path, e) => write!(f, "config file {}: {e}", path.display()),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    cache_control: Option<String>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    /// Server settings, read once at start by `config::sources`, not here.
    #[serde(default, rename = "server")]
    _server: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    glob: String,
    cache_control: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Rule {
    cache_control: Option<String>,
    headers: Vec<(String, String)>,
}

/// The cache policy and extra headers for every file of a snapshot.
#[derive(Debug)]
pub struct HeaderPolicy {
    default_cache_control: String,
    rules: Vec<Rule>,
    globs: GlobSet,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy {
            default_cache_control: DEFAULT_CACHE_CONTROL.to_owned(),
            rules: Vec::new(),
            globs: GlobSet::empty(),
        }
    }
}

impl HeaderPolicy {
    /// Reads the config file (if any); `cli_default` (`--cache-control`) wins
    /// over the file's default.
    pub fn load(cli_default: Option<&str>, config: Option<&Path>) -> Result<HeaderPolicy, ConfigError> {
        let file = match config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))?
            }
            None => ConfigFile {
                cache_control: None,
                rules: Vec::new(),
                _server: None,
            },
        };
        let default_cache_control = cli_default
            .map(str::to_owned)
            .or(file.cache_control)
            .unwrap_or_else(|| DEFAULT_CACHE_CONTROL.to_owned());
        check_value("cache_control", &default_cache_control)?;
        let mut globs = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for rule in file.rules {
            let glob = GlobBuilder::new(rule.glob.trim_start_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| ConfigError::Invalid(format!("rule glob {:?}: {e}", rule.glob)))?;
            globs.add(glob);
            if let Some(value) = &rule.cache_control {
                check_value("cache_control", value)?;
            }
            for (name, value) in &rule.headers {
                check_header(name, value)?;
            }
            rules.push(Rule {
                cache_control: rule.cache_control,
                headers: rule.headers.into_iter().collect(),
            });
        }
        let globs = globs
            .build()
            .map_err(|e| ConfigError::Invalid(format!("rule globs: {e}")))?;
        Ok(HeaderPolicy {
            default_cache_control,
            rules,
            globs,
        })
    }

    /// The `Cache-Control` line and extra header lines for a file, each
    /// CRLF-terminated. `relative_path` has no leading slash.
    pub fn lines_for(&self, relative_path: &str, content_type: &str) -> String {
        let matched = if self.rules.is_empty() {
            Vec::new()
        } else {
            self.globs.matches(relative_path)
        };
        let ruled = matched
            .iter()
            .rev()
            .find_map(|&i| self.rules[i].cache_control.as_deref());
        let file_name = relative_path.rsplit('/').next().unwrap_or(relative_path);
        let cache_control = ruled.unwrap_or_else(|| {
            if content_type.starts_with("text/html") {
                HTML_CACHE_CONTROL
            } else if has_content_hash(file_name) {
                HASHED_CACHE_CONTROL
            } else {
                &self.default_cache_control
            }
        });
        let mut lines = String::with_capacity(64);
        let _ = write!(lines, "Cache-Control: {cache_control}\r\n");
        let mut headers: Vec<(&str, &str)> = Vec::new();
        for &i in &matched {
            for (name, value) in &self.rules[i].headers {
                match headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some(existing) => existing.1 = value,
                    None => headers.push((name, value)),
                }
            }
        }
        for (name, value) in headers {
            let _ = write!(lines, "{name}: {value}\r\n");
        }
        lines
    }
}

fn check_header(name: &str, value: &str) -> Result<(), ConfigError> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::Invalid(format!(
            "header name {name:?} is not a valid field name"
        )));
    }
    if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        let hint = if name.eq_ignore_ascii_case("cache-control") {
            " (use the rule's cache_control key)"
        } else {
            ""
        };
        return Err(ConfigError::Invalid(format!(
            "header {name:?} is set by the server and cannot be configured{hint}"
        )));
    }
    check_value(name, value)
}

/// A field value: visible ASCII, spaces and tabs inside, nothing that could
/// end the line.
fn check_value(name: &str, value: &str) -> Result<(), ConfigError> {
    let valid = !value.is_empty()
        && value.trim() == value
        && value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "value {value:?} for {name} is empty, has surrounding spaces or a byte a header cannot carry"
        )))
    }
}

/// Whether a file name carries a content hash, as bundlers write them:
/// `app.3f9a2c1b.js` (webpack, Parcel), `chunk-5AB3F9C1.css` (esbuild),
/// `index-BfQ2x9aK.js` (Vite, Rollup), `_app-abc123def4567890.js` (Next.js).
///
/// A candidate is a dot-separated part of the name other than the extension,
/// or the tail of such a part after its last `-` or `_`. It is a hash if it
/// is 8 to 64 characters long and either
/// - hex digits in one letter case with at least one digit and one letter, or
/// - 8 to 16 letters and digits, with at least one digit and one letter, that
///   switch between lower case, upper case and digit at least three times
///   (base-32/64 hashes do; words, versions and dates do not).
///
/// So `jquery.min.js`, `jquery-3.7.1.js`, `report-2024-01-15.pdf`,
/// `backup-20240115.tar.gz` and `IMG20240115.jpg` are not hashed. A hash
/// that happens to be all digits or all letters is missed: the file then gets
/// the default policy, which is the safe mistake.
pub fn has_content_hash(file_name: &str) -> bool {
    let mut parts: Vec<&str> = file_name.split('.').collect();
    if parts.len() > 1 {
        parts.pop();
    }
    parts.iter().any(|part| {
        is_hash_token(part)
            || part
                .rfind(['-', '_'])
                .is_some_and(|i| is_hash_token(&part[i + 1..]))
    })
}

fn is_hash_token(token: &str) -> bool {
    let bytes = token.as_bytes();
    if !(8..=64).contains(&bytes.len()) || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == bytes.len() {
        return false;
    }
    let hex_lower = bytes
        .iter()
        .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let hex_upper = bytes
        .iter()
        .all(|&b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if hex_lower || hex_upper {
        return true;
    }
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Digit,
        Lower,
        Upper,
    }
    let class = |b: u8| {
        if b.is_ascii_digit() {
            Class::Digit
        } else if b.is_ascii_lowercase() {
            Class::Lower
        } else {
            Class::Upper
        }
    };
    let switches = bytes.windows(2).filter(|w| class(w[0]) != class(w[1])).count();
    bytes.len() <= 16 && switches >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_from_common_bundlers() {
        for name in [
            "app.3f9a2c1b.js",
            "chunk-5AB3F9C1.css",
            "index-BfQ2x9aK.js",
            "main.3f9a2c1b4d5e6f70.chunk.js",
            "_app-abc123def4567890.js",
            "styles.a1b2c3d4e5f6a7b8c9d0.css",
            "3f9a2c1b4d.js",
            "font_Xy7Kp2Qa.woff2",
            "vendor~main.0a1b2c3d.js",
            "logo.8c2f1e4a.svg",
            "asset-9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.png",
        ] {
            assert!(has_content_hash(name), "{name} should count as hashed");
        }
    }

    #[test]
    fn ordinary_names_are_not_hashed() {
        for name in [
            "jquery.min.js",
            "jquery-3.7.1.min.js",
            "app.js",
            "index.html",
            "bootstrap.bundle.min.js",
            "polyfills.js",
            "report-2024-01-15.pdf",
            "backup-20240115.tar.gz",
            "IMG20240115.jpg",
            "IMG_20240115_123456.jpg",
            "photo-2024_01_15.jpeg",
            "favicon-32x32.png",
            "android-chrome-192x192.png",
            "1234567890.png",
            "deadbeef.js",
            "Q3report.pdf",
            "sitemap2024.xml",
            "v1.2.3.tar.gz",
            "README",
            ".htaccess",
            "release-candidate-2.zip",
            "changelog-v10.md",
        ] {
            assert!(!has_content_hash(name), "{name} should not count as hashed");
        }
    }

    #[test]
    fn default_policy() {
        let policy = HeaderPolicy::default();
        assert_eq!(
            policy.lines_for("index.html", "text/html; charset=utf-8"),
            "Cache-Control: no-cache\r\n"
        );
        assert_eq!(
            policy.lines_for("assets/app.3f9a2c1b.js", "text/javascript"),
            "Cache-Control: public, max-age=31536000, immutable\r\n"
        );
        assert_eq!(
            policy.lines_for("img/logo.png", "image/png"),
            "Cache-Control: no-cache\r\n"
        );
    }

    fn write_config(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ringserve-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn config_rules_override_and_add_headers() {
        let path = write_config(
            "rules",
            r#"
cache_control = "public, max-age=3600"

[[rules]]
glob = "**"
headers = { X-Content-Type-Options = "nosniff", X-Frame-Options = "DENY" }

[[rules]]
glob = "fonts/**"
cache_control = "public, max-age=604800"
headers = { Access-Control-Allow-Origin = "*", X-Frame-Options = "SAMEORIGIN" }

[[rules]]
glob = "*.html"
cache_control = "no-store"
"#,
        );
        let policy = HeaderPolicy::load(None, Some(&path)).unwrap();
        assert_eq!(
            policy.lines_for("img/logo.png", "image/png"),
            "Cache-Control: public, max-age=3600\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
        );
        assert_eq!(
            policy.lines_for("fonts/a.woff2", "font/woff2"),
            "Cache-Control: public, max-age=604800\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: SAMEORIGIN\r\nAccess-Control-Allow-Origin: *\r\n"
        );
        // `*` does not cross `/`: only the top-level page matches the third rule.
        assert!(
            policy
                .lines_for("index.html", "text/html")
                .starts_with("Cache-Control: no-store\r\n")
        );
        assert!(
            policy
                .lines_for("docs/index.html", "text/html")
                .starts_with("Cache-Control: no-cache\r\n")
        );
        // The command line's default wins over the file's.
        let policy = HeaderPolicy::load(Some("max-age=60"), Some(&path)).unwrap();
        assert!(
            policy
                .lines_for("a.txt", "text/plain")
                .starts_with("Cache-Control: max-age=60\r\n")
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        for (name, text, expected) in [
            ("syntax", "cache_control = ", "config file"),
            ("unknown", "cache_controll = \"x\"", "unknown field"),
            ("glob", "[[rules]]\nglob = \"a[\"", "glob"),
            (
                "reserved",
                "[[rules]]\nglob = \"**\"\nheaders = { Content-Length = \"1\" }",
                "set by the server",
            ),
            (
                "cc",
                "[[rules]]\nglob = \"**\"\nheaders = { Cache-Control = \"x\" }",
                "cache_control key",
            ),
            (
                "name",
                "[[rules]]\nglob = \"**\"\nheaders = { \"Bad Name\" = \"x\" }",
                "valid field name",
            ),
            (
                "value",
                "[[rules]]\nglob = \"**\"\nheaders = { X-A = \"a\\r\\nX-B: b\" }",
                "cannot carry",
            ),
        ] {
            let path = write_config(name, text);
            let err = HeaderPolicy::load(None, Some(&path)).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            std::fs::remove_file(path).unwrap();
        }
        let err = HeaderPolicy::load(None, Some(Path::new("/nonexistent/ringserve.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ringserve.toml"));
        assert!(HeaderPolicy::load(Some("bad\r\nvalue"), None).is_err());
    }
}
