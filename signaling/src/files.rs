//! The static folder (`--static-dir`): which request paths name a file we may serve.
//!
//! Only regular files that resolve inside the folder are served: symlinks are followed and the
//! target must still be inside (a `static/rootlink -> /` must not serve `/etc/passwd`), and no
//! path segment may start with a dot (dotfiles, `.git/`, `..`). Anything else is a 404, never a
//! 500: an over-long segment or an unreadable path is just "not found".

use std::path::{Path, PathBuf};

/// What a request path resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file inside the folder, by its canonical path.
    File(PathBuf),
    /// A folder asked for without its trailing slash: redirect so relative links work.
    AddSlash,
    /// Nothing we serve.
    NotFound,
}

/// Resolves the URL path `path` (percent-encoded, as in the request line) against `root`.
/// A folder serves its `index.html`, under the same rules.
pub async fn resolve(root: &Path, path: &str) -> Resolved {
    let Some(decoded) = percent_decode(path) else {
        return Resolved::NotFound;
    };
    let mut rel = PathBuf::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') || seg.contains(['\\', '\0']) {
            return Resolved::NotFound;
        }
        rel.push(seg);
    }
    let Ok(root) = tokio::fs::canonicalize(root).await else {
        return Resolved::NotFound;
    };
    let Some(target) = inside(&root, &root.join(&rel)).await else {
        return Resolved::NotFound;
    };
    let Ok(meta) = tokio::fs::metadata(&target).await else {
        return Resolved::NotFound;
    };
    if meta.is_file() {
        return Resolved::File(target);
    }
    if !meta.is_dir() {
        return Resolved::NotFound;
    }
    if !decoded.ends_with('/') {
        return Resolved::AddSlash;
    }
    match inside(&root, &target.join("index.html")).await {
        Some(index) if tokio::fs::metadata(&index).await.is_ok_and(|m| m.is_file()) => {
            Resolved::File(index)
        }
        _ => Resolved::NotFound,
    }
}

/// `p` with every symlink resolved, if that is inside `root` (itself canonical).
async fn inside(root: &Path, p: &Path) -> Option<PathBuf> {
    let c = tokio::fs::canonicalize(p).await.ok()?;
    c.starts_with(root).then_some(c)
}

/// `%XX` decoding; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/%2e%2E/x").as_deref(), Some("/../x"));
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%4"), None);
        assert_eq!(percent_decode("/%ff"), None);
        assert_eq!(percent_decode("/%+f"), None);
    }
}
