//! Directory listings (`--directory-listing`, off by default): an HTML page
//! for each directory without an index file, generated when the snapshot is
//! built and served like any other file (validators, compression, cache
//! policy).
//!
//! Only what the snapshot can serve is listed (no dotfiles unless they are
//! served, nothing outside the root). Entries are sorted by name, directories
//! first; names are HTML-escaped for display and percent-encoded in links, so
//! a file called `<script>.html` or `a b&c` cannot inject markup or break a
//! link.

use std::fmt::Write as _;

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ListingItem {
    /// Directories sort first.
    pub is_file: bool,
    /// The raw name (a file name is bytes on Linux).
    pub name: Vec<u8>,
}

/// The listing page of directory `url_dir` (`/` or `/a/b/`).
pub(super) fn render_listing(url_dir: &[u8], items: &mut [ListingItem]) -> Vec<u8> {
    items.sort();
    let title = escape_html(&String::from_utf8_lossy(url_dir));
    let mut page = String::with_capacity(256 + items.len() * 64);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if url_dir != b"/" {
        page.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for item in items.iter() {
        let slash = if item.is_file { "" } else { "/" };
        let _ = writeln!(
            page,
            "<li><a href=\"{}{slash}\">{}{slash}</a></li>",
            percent_encode(&item.name),
            escape_html(&String::from_utf8_lossy(&item.name)),
        );
    }
    page.push_str("</ul>\n<hr><p>ringserve</p></body></html>\n");
    page.into_bytes()
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986 §2.3), so a
/// relative link to the name resolves to exactly that name.
fn percent_encode(name: &[u8]) -> String {
    let mut encoded = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, is_file: bool) -> ListingItem {
        ListingItem {
            is_file,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn sorted_directories_first_escaped_and_encoded() {
        let mut items = vec![
            item("b.txt", true),
            item("<script>alert(1)</script>.html", true),
            item("a b&c", true),
            item("zdir", false),
            item("adir", false),
        ];
        let page = String::from_utf8(render_listing(b"/sub/", &mut items)).unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;.html"));
        assert!(page.contains("href=\"%3Cscript%3Ealert%281%29%3C%2Fscript%3E.html\""));
        assert!(page.contains("<a href=\"a%20b%26c\">a b&amp;c</a>"));
        assert!(page.contains("<a href=\"../\">"));
        let order: Vec<usize> = ["adir/", "zdir/", "%3Cscript", "a%20b", "b.txt"]
            .iter()
            .map(|needle| page.find(needle).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{page}");
    }

    #[test]
    fn root_has_no_parent_link() {
        let page = String::from_utf8(render_listing(b"/", &mut [item("a", true)])).unwrap();
        assert!(!page.contains("../"));
        assert!(page.contains("Index of /"));
    }
}
