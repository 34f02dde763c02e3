//! Static files from `public_dir`: path checks, content types, ETags, and a small cache.
//!
//! A URL path is decoded and checked by [`relative_path`] (no I/O) before the disk is
//! touched; the file is then resolved with symlinks followed and must still lie under the
//! canonical root. Files are cached in memory with their ETag and re-checked on disk at
//! most once per [`RECHECK`], so a hot file costs no system call per request while an
//! edited file is picked up within a second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a cached file is trusted before its metadata is looked at again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Files larger than this are not served: the cache holds whole files.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// A file ready to send.
#[derive(Debug)]
pub struct StaticFile {
    pub body: Arc<[u8]>,
    /// Strong validator: a digest of the content, quoted.
    pub etag: String,
    pub content_type: &'static str,
}

#[derive(Debug)]
struct Cached {
    file: Arc<StaticFile>,
    modified: Option<SystemTime>,
    len: u64,
    checked: Instant,
}

/// The served directory and its cache.
#[derive(Debug)]
pub struct StaticFiles {
    /// Canonical root, or None if the directory does not exist (everything is 404).
    root: Option<PathBuf>,
    cache: HashMap<String, Cached>,
}

impl StaticFiles {
    pub fn new(dir: &Path) -> Self {
        let root = match dir.canonicalize() {
            Ok(root) if root.is_dir() => Some(root),
            _ => {
                log::warn!(
                    "public_dir {} is not a directory; static files are disabled",
                    dir.display()
                );
                None
            }
        };
        StaticFiles {
            root,
            cache: HashMap::new(),
        }
    }

    /// The file for a URL path, or None (404) for anything missing, hidden, outside the
    /// root or unreadable.
    pub fn get(&mut self, url_path: &str, now: Instant) -> Option<Arc<StaticFile>> {
        let root = self.root.as_ref()?;
        let rel = relative_path(url_path)?;
        if let Some(c) = self.cache.get(&rel)
            && now.saturating_duration_since(c.checked) < RECHECK
        {
            return Some(c.file.clone());
        }
        let full = root.join(&rel).canonicalize().ok()?;
        if !full.starts_with(root) {
            log::warn!("refused {url_path}: resolves outside public_dir");
            self.cache.remove(&rel);
            return None;
        }
        let meta = std::fs::metadata(&full).ok().filter(|m| m.is_file());
        let Some(meta) = meta else {
            self.cache.remove(&rel);
            return None;
        };
        let modified = meta.modified().ok();
        if let Some(c) = self.cache.get_mut(&rel)
            && c.modified == modified
            && c.len == meta.len()
        {
            c.checked = now;
            return Some(c.file.clone());
        }
        if meta.len() > MAX_FILE_BYTES {
            log::warn!("refused {url_path}: larger than {MAX_FILE_BYTES} bytes");
            return None;
        }
        let body: Arc<[u8]> = match std::fs::read(&full) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                log::warn!("cannot read {}: {e}", full.display());
                return None;
            }
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let etag = format!("\"{}\"", hex(&digest.as_ref()[..12]));
        let file = Arc::new(StaticFile {
            content_type: content_type(&rel),
            etag,
            body,
        });
        self.cache.insert(
            rel,
            Cached {
                file: file.clone(),
                modified,
                len: meta.len(),
                checked: now,
            },
        );
        Some(file)
    }
}

/// Whether an If-None-Match header value matches the ETag (`*`, or one of a list).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate == etag || candidate.strip_prefix("W/") == Some(etag)
    })
}

/// Decodes and checks a URL path; returns the path relative to the root, with
/// `index.html` for directories. None for anything that could leave the root or reach a
/// hidden file: `..` or `.` segments (also percent-encoded), empty segments, backslashes,
/// NUL, dot-files, invalid escapes or UTF-8.
pub fn relative_path(url_path: &str) -> Option<String> {
    let decoded = percent_decode(url_path)?;
    let rest = decoded.strip_prefix('/')?;
    if decoded.contains(['\\', '\0']) {
        return None;
    }
    let mut parts: Vec<&str> = rest.split('/').collect();
    if parts.last() == Some(&"") {
        parts.pop();
        parts.push("index.html");
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || p.starts_with('.') || p.contains(':'))
    {
        return None;
    }
    Some(parts.join("/"))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
            let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Content-Type by file extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_nested_paths() {
        assert_eq!(relative_path("/").as_deref(), Some("index.html"));
        assert_eq!(relative_path("/app.js").as_deref(), Some("app.js"));
        assert_eq!(relative_path("/img/").as_deref(), Some("img/index.html"));
        assert_eq!(relative_path("/a%20b.txt").as_deref(), Some("a b.txt"));
    }

    #[test]
    fn traversal_and_hidden_files_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2fetc%2fpasswd",
            "/..%2f..%2fetc/passwd",
            "/./index.html",
            "//etc/passwd",
            "/a//b",
            "/.git/config",
            "/..\\..\\windows",
            "/a%00.html",
            "/%zz",
            "/%2",
            "/%ff",
            "relative",
            "/C:/x",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x/app.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn serves_files_and_refuses_symlinks_out() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public");
        std::fs::create_dir(&public).unwrap();
        std::fs::write(public.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), public.join("leak.txt")).unwrap();
        let mut files = StaticFiles::new(&public);
        let now = Instant::now();
        let f = files.get("/", now).unwrap();
        assert_eq!(&*f.body, b"<p>hi</p>");
        assert_eq!(f.content_type, "text/html; charset=utf-8");
        assert!(files.get("/leak.txt", now).is_none());
        assert!(files.get("/missing.txt", now).is_none());

        // An edit is picked up after the recheck interval, with a new ETag.
        std::fs::write(public.join("index.html"), "<p>changed</p>").unwrap();
        let g = files.get("/", now + RECHECK).unwrap();
        assert_eq!(&*g.body, b"<p>changed</p>");
        assert_ne!(f.etag, g.etag);
    }
}
