//! The pages' templates (`templates/admin/`, askama: compiled into the binary and checked
//! when the crate builds) and what they are filled with. Askama HTML-escapes every value
//! a template prints, so names, labels, paths and reasons from clients or the store need
//! no escaping here; the filters below only format.

use super::DEFAULT_PAGE;
use crate::admin::{ClientView, FailureView, FileView, StatsView, UploadView};
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Renders a page with its status (500 if rendering fails, which only a failing
/// `Display` can cause).
pub(super) fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "admin: a page failed to render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Debug, Template)]
#[template(path = "admin/login.html")]
pub(super) struct LoginPage<'a> {
    /// Why the last attempt failed; empty on the first visit.
    pub message: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "admin/error.html")]
pub(super) struct ErrorPage<'a> {
    pub status: StatusCode,
    pub message: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "admin/dashboard.html")]
pub(super) struct DashboardPage<'a> {
    pub title: &'a str,
    pub csrf: &'a str,
    pub stats: &'a StatsView,
    pub uploads: &'a [UploadView],
    pub failures: &'a [FailureView],
}

#[derive(Debug, Template)]
#[template(path = "admin/clients.html")]
pub(super) struct ClientsPage<'a> {
    pub title: &'a str,
    pub csrf: &'a str,
    pub total: usize,
    /// The clients of this page.
    pub clients: &'a [ClientView],
    pub pager: Option<Pager>,
}

#[derive(Debug, Template)]
#[template(path = "admin/client.html")]
pub(super) struct ClientPage<'a> {
    pub title: &'a str,
    pub csrf: &'a str,
    pub client: &'a ClientView,
    /// The files of this page.
    pub files: &'a [FileView],
    pub pager: Option<Pager>,
}

/// The previous and next links of a list longer than one page (`pager.html`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pager {
    /// The list's path; `?page=N` is appended.
    pub base: String,
    /// The page shown, from 1 (`?page=` counts from 0; any number may be asked for).
    pub number: usize,
    pub pages: usize,
    pub previous: Option<usize>,
    pub next: Option<usize>,
}

impl Pager {
    /// `None` when everything fits on one page. A page past the end (an empty list) links
    /// back to the last one.
    pub fn new(base: String, page: usize, total: usize) -> Option<Self> {
        let pages = total.div_ceil(DEFAULT_PAGE).max(1);
        (pages > 1).then(|| Pager {
            base,
            number: page.saturating_add(1),
            pages,
            previous: page.min(pages).checked_sub(1),
            next: page.checked_add(1).filter(|next| *next < pages),
        })
    }
}

/// Percent-encodes a query parameter value (URL escaping; the template then HTML-escapes
/// the result, which leaves it as it is).
pub(super) fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Bytes as B, KiB, MiB, GiB.
pub(super) fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = units.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {name}")
    }
}

/// The templates' own filters (askama looks them up in a module of this name).
mod filters {
    use askama::{Result, Values};

    /// `{{ bytes|size }}`
    #[askama::filter_fn]
    pub fn size(bytes: &u64, _: &dyn Values) -> Result<String> {
        Ok(super::size(*bytes))
    }

    /// `{{ file.size|size_or_missing }}`: a row without its stored file says so.
    #[askama::filter_fn]
    pub fn size_or_missing(bytes: &Option<u64>, _: &dyn Values) -> Result<String> {
        Ok(bytes.map_or_else(|| "missing".to_owned(), super::size))
    }

    /// `{{ text|query_value }}`
    #[askama::filter_fn]
    pub fn query_value<T: AsRef<str>>(text: T, _: &dyn Values) -> Result<String> {
        Ok(super::query_value(text.as_ref()))
    }

    /// `{{ client.key_fingerprint|fingerprint_prefix }}`: enough of it to tell keys apart
    /// in a table.
    #[askama::filter_fn]
    pub fn fingerprint_prefix(key: &Option<String>, _: &dyn Values) -> Result<String> {
        Ok(key
            .as_deref()
            .map_or_else(|| "-".to_owned(), |f| f.chars().take(16).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printable ASCII, as names and labels may be: everything HTML gives a meaning to.
    const HOSTILE: &str = "<script>alert(\"x&'y\")</script>";
    const ESCAPED: &str = "&#60;script&#62;alert(&#34;x&#38;&#39;y&#34;)&#60;/script&#62;";

    fn client(name: &str) -> ClientView {
        ClientView {
            name: name.to_owned(),
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            last_seen: Some(HOSTILE.to_owned()),
            public_key_bits: Some(1024),
            key_fingerprint: Some("ab".repeat(32)),
            has_aes_key: true,
            files: 1,
            bytes: 1536,
        }
    }

    fn html(page: &impl Template) -> String {
        page.render().unwrap()
    }

    #[test]
    fn sizes_query_values_and_pagers() {
        assert_eq!(query_value("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(size(5), "5 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(Pager::new("/clients".to_owned(), 0, 10), None);
        assert_eq!(Pager::new("/clients".to_owned(), 0, DEFAULT_PAGE), None);
        let middle = Pager::new("/clients".to_owned(), 1, 3 * DEFAULT_PAGE).unwrap();
        assert_eq!((middle.previous, middle.next), (Some(0), Some(2)));
        let first = Pager::new("/clients".to_owned(), 0, DEFAULT_PAGE + 1).unwrap();
        assert_eq!((first.previous, first.next), (None, Some(1)));
        // Any number may be asked for: past the end, the way back is the last page.
        let past = Pager::new("/clients".to_owned(), usize::MAX, 3 * DEFAULT_PAGE).unwrap();
        assert_eq!(
            (past.number, past.previous, past.next),
            (usize::MAX, Some(2), None)
        );
        let page = html(&ClientsPage {
            title: "Clients",
            csrf: "c",
            total: 3 * DEFAULT_PAGE,
            clients: &[],
            pager: Some(past),
        });
        assert!(
            page.contains(&format!("Page {} of 3", usize::MAX)),
            "{page}"
        );
    }

    #[test]
    fn the_clients_page_escapes_what_clients_chose() {
        let clients = [client(HOSTILE)];
        let page = html(&ClientsPage {
            title: "Clients",
            csrf: "c5rf",
            total: 2 * DEFAULT_PAGE,
            clients: &clients,
            pager: Pager::new("/clients".to_owned(), 1, 2 * DEFAULT_PAGE),
        });
        assert!(!page.contains("<script>alert"), "{page}");
        // The name, and the last-seen text (stored text, whatever it holds).
        assert_eq!(page.matches(ESCAPED).count(), 2, "{page}");
        assert!(page.contains("<meta name=\"csrf-token\" content=\"c5rf\">"));
        assert!(page.contains("<input type=\"hidden\" name=\"csrf\" value=\"c5rf\">"));
        assert!(
            page.contains(&format!(">{}</code>", "ab".repeat(8))),
            "{page}"
        );
        assert!(page.contains("<td data-label=\"Bytes\" data-sort=\"1536\">1.5 KiB</td>"));
        assert!(page.contains("<nav class=\"pager\">Page 2 of 2 <a rel=\"prev\" href=\"/clients?page=0\">Previous</a></nav>"), "{page}");
    }

    #[test]
    fn the_client_page_escapes_names_labels_and_paths() {
        let client = client(HOSTILE);
        let files = [FileView {
            client_id: client.id.clone(),
            client_name: Some(HOSTILE.to_owned()),
            file_name: HOSTILE.to_owned(),
            path: HOSTILE.to_owned(),
            size: None,
            verified: false,
        }];
        let page = html(&ClientPage {
            title: &format!("Client {HOSTILE}"),
            csrf: "c5rf",
            client: &client,
            files: &files,
            pager: None,
        });
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains(&format!("<title>Client {ESCAPED} · sfc-server</title>")));
        assert!(page.contains(&format!("<h1>Client {ESCAPED}</h1>")));
        assert!(page.contains(&format!("data-confirm=\"Delete {ESCAPED}?\"")));
        assert!(page.contains(&format!("name=\"name\" value=\"{ESCAPED}\"")));
        assert!(page.contains(&format!("data-confirm=\"Remove {ESCAPED} and all")));
        assert!(page.contains(&format!("<code>{ESCAPED}</code>")));
        // The download link's query: percent-encoded, which HTML-escaping leaves alone.
        assert!(page.contains(&format!("download?name={}\"", query_value(HOSTILE))));
        assert!(page.contains(">missing</td>") && page.contains(">no</td>"));
        assert!(!page.contains("class=\"pager\""));
    }

    #[test]
    fn login_and_error_pages_escape_their_message() {
        let login = html(&LoginPage { message: HOSTILE });
        assert!(login.contains(&format!("<p class=\"error\" role=\"alert\">{ESCAPED}</p>")));
        assert!(!html(&LoginPage { message: "" }).contains("role=\"alert\""));
        let error = html(&ErrorPage {
            status: StatusCode::NOT_FOUND,
            message: HOSTILE,
        });
        assert!(error.contains(&format!("<h1>404 Not Found</h1><p>{ESCAPED}</p>")));
        assert!(!error.contains("<script>alert"));
    }
}
