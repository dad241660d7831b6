//! The server-rendered pages: login, dashboard, clients, one client's files, and the
//! actions (download, delete a file, remove a client) as forms that carry the session's
//! CSRF token. Everything is embedded in the binary (`static/`): no CDN, no external
//! fonts or scripts; the script only sorts tables, asks before destructive actions and
//! refreshes the dashboard's live parts from the JSON API.
//!
//! Markup is written with `format!` and [`esc`] on every value that comes from a client
//! or the store (names, labels, reasons).

use super::access::{authenticate, check_csrf, login_failed, Auth};
use super::actions::{download_file, remove_client, remove_file, FileQuery};
use super::api::{all_clients, client_files, one_client, stats, uploads};
use super::auth::same_secret;
use super::{Peer, Shared, DEFAULT_PAGE};
use crate::admin::{ClientView, FailureView, FileView, UploadView};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::fmt::Write;
use std::time::Instant;

const CSS: &str = include_str!("static/admin.css");
const JS: &str = include_str!("static/admin.js");

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/clients", get(clients_page))
        .route("/clients/{id}", get(client_page))
        .route("/clients/{id}/download", get(download))
        .route("/clients/{id}/delete", post(delete_file))
        .route("/clients/{id}/remove", post(remove))
        .route(
            "/static/admin.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route(
            "/static/admin.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }),
        )
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
fn query_value(text: &str) -> String {
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
fn size(bytes: u64) -> String {
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

fn layout(title: &str, csrf: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\">\
         <title>{title} · sfc-server</title>\
         <link rel=\"stylesheet\" href=\"/static/admin.css\"></head><body>\
         <header><nav><strong>sfc-server</strong> <a href=\"/\">Dashboard</a> \
         <a href=\"/clients\">Clients</a>\
         <form method=\"post\" action=\"/logout\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Log out</button></form></nav></header>\
         <main><h1>{title}</h1>{body}</main>\
         <script src=\"/static/admin.js\"></script></body></html>\n",
        title = esc(title),
        csrf = esc(csrf),
    ))
}

/// The CSRF token of a page request's session (`None`: send it to the login form).
fn session(state: &Shared, peer: Peer, headers: &HeaderMap) -> Option<String> {
    match authenticate(state, peer.0, headers) {
        Ok(Auth::Session { csrf, .. }) => Some(csrf),
        // Pages are for browsers; a bearer token gets the page without forms that work.
        Ok(Auth::Bearer) => Some(String::new()),
        Err(_) => None,
    }
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn error_page(error: super::ApiError) -> Response {
    let status = error.0;
    (
        status,
        Html(format!(
            "<!doctype html><title>{status}</title><link rel=\"stylesheet\" href=\"/static/admin.css\">\
             <main><h1>{status}</h1><p>{}</p><p><a href=\"/\">Dashboard</a></p></main>",
            esc(&error.1)
        )),
    )
        .into_response()
}

// ----- login ------------------------------------------------------------------------------

async fn login_form() -> Html<String> {
    login_html("")
}

fn login_html(message: &str) -> Html<String> {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(message))
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Log in · sfc-server</title><link rel=\"stylesheet\" href=\"/static/admin.css\">\
         </head><body><main class=\"login\"><h1>sfc-server admin</h1>{note}\
         <form method=\"post\" action=\"/login\">\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"hint\">The token is in the admin token file (default: admin.token in the data folder).</p>\
         </main></body></html>\n"
    ))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = Instant::now();
    if state.sessions.blocked(peer.0.ip(), now) {
        tracing::warn!(peer = %peer.0, "admin: login refused: too many failed logins");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            login_html("Too many failed logins from this address; wait a minute."),
        )
            .into_response();
    }
    if !same_secret(form.token.trim(), &state.token) {
        login_failed(&state, peer.0, "wrong token at the login form");
        return (StatusCode::UNAUTHORIZED, login_html("Wrong token.")).into_response();
    }
    let (id, _csrf) = state.sessions.create(now);
    let secure = if state.secure_cookie { "; Secure" } else { "" };
    tracing::info!(peer = %peer.0, "admin: logged in");
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
                    super::COOKIE,
                    super::auth::SESSION_LIFETIME.as_secs()
                ),
            ),
            (header::LOCATION, "/".to_owned()),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

async fn logout(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Ok(auth @ Auth::Session { .. }) = authenticate(&state, peer.0, &headers) {
        if check_csrf(&auth, &headers, Some(&form.csrf)).is_err() {
            return error_page(super::ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token",
            ));
        }
        if let Auth::Session { id, .. } = auth {
            state.sessions.end(&id);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                    super::COOKIE
                ),
            ),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

// ----- pages ------------------------------------------------------------------------------

fn uploads_table(uploads: &[UploadView]) -> String {
    let mut rows = String::new();
    for u in uploads {
        let _ = write!(
            rows,
            "<tr><td data-label=\"Client\">{}</td><td data-label=\"File\">{}</td>\
             <td data-label=\"Packets\">{} / {}</td><td data-label=\"Received\">{}</td>\
             <td data-label=\"Rate\">{}/s</td></tr>",
            esc(u.client_name.as_deref().unwrap_or(&u.client_id)),
            esc(&u.file_name),
            u.packets_received,
            u.total_packets,
            esc(&size(u.bytes_received)),
            esc(&size(u.bytes_per_second)),
        );
    }
    if uploads.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"5\">No upload in progress</td></tr>");
    }
    format!(
        "<table id=\"uploads\" class=\"sortable\"><thead><tr><th>Client</th><th>File</th>\
         <th>Packets</th><th>Received</th><th>Rate</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

fn failures_table(failures: &[FailureView]) -> String {
    let mut rows = String::new();
    for f in failures.iter().take(20) {
        let _ = write!(
            rows,
            "<tr><td data-label=\"When\">{}</td><td data-label=\"What\">{}</td>\
             <td data-label=\"From\">{}</td><td data-label=\"Why\">{}</td></tr>",
            esc(&f.at),
            esc(&f.kind),
            esc(f.peer.as_deref().unwrap_or("-")),
            esc(&f.detail),
        );
    }
    if failures.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"4\">No failure since start</td></tr>");
    }
    format!(
        "<table id=\"failures\" class=\"sortable\"><thead><tr><th>When (UTC)</th><th>What</th>\
         <th>From</th><th>Why</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

async fn dashboard(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let Some(csrf) = session(&state, peer, &headers) else {
        return to_login();
    };
    let (stats, uploads) = match (stats(&state).await, uploads(&state).await) {
        (Ok(stats), Ok(uploads)) => (stats, uploads),
        (Err(error), _) | (_, Err(error)) => return error_page(error),
    };
    let failures = state.monitor.snapshot().failures;
    let body = format!(
        "<section class=\"cards\" id=\"stats\">\
         <div><span class=\"n\" data-stat=\"clients\">{}</span> clients</div>\
         <div><span class=\"n\" data-stat=\"files\">{}</span> files</div>\
         <div><span class=\"n\" data-stat=\"bytes_stored\">{}</span> stored</div>\
         <div><span class=\"n\" data-stat=\"connections_open\">{}</span> connections open</div>\
         <div><span class=\"n\" data-stat=\"uploads_in_progress\">{}</span> uploads in progress</div>\
         </section><h2>Uploads in progress</h2><div class=\"scroll\" data-live=\"uploads\">{}</div>\
         <h2>Last failures</h2><div class=\"scroll\" data-live=\"failures\">{}</div>\
         <p class=\"hint\">Version {}. This page refreshes itself every 2 s.</p>",
        stats.clients,
        stats.files,
        esc(&size(stats.bytes_stored)),
        stats.connections_open,
        stats.uploads_in_progress,
        uploads_table(&uploads),
        failures_table(&failures),
        esc(&stats.version),
    );
    let mut page = layout("Dashboard", &csrf, &body);
    page.0 = page.0.replace("<body>", "<body data-page=\"dashboard\">");
    page.into_response()
}

#[derive(Debug, Deserialize)]
struct PageNumber {
    #[serde(default)]
    page: usize,
}

fn pager(base: &str, page: usize, total: usize) -> String {
    let pages = total.div_ceil(DEFAULT_PAGE).max(1);
    if pages <= 1 {
        return String::new();
    }
    let mut out = format!("<nav class=\"pager\">Page {} of {pages} ", page + 1);
    if page > 0 {
        let _ = write!(
            out,
            "<a rel=\"prev\" href=\"{base}?page={}\">Previous</a> ",
            page - 1
        );
    }
    if page + 1 < pages {
        let _ = write!(
            out,
            "<a rel=\"next\" href=\"{base}?page={}\">Next</a>",
            page + 1
        );
    }
    out.push_str("</nav>");
    out
}

fn clients_table(clients: &[ClientView]) -> String {
    let mut rows = String::new();
    for c in clients {
        let _ = write!(
            rows,
            "<tr><td data-label=\"Name\"><a href=\"/clients/{id}\">{name}</a></td>\
             <td data-label=\"ID\"><code>{id}</code></td><td data-label=\"Last seen\">{seen}</td>\
             <td data-label=\"Files\" data-sort=\"{files}\">{files}</td>\
             <td data-label=\"Bytes\" data-sort=\"{bytes}\">{size}</td>\
             <td data-label=\"Key\"><code title=\"SHA-256 of the public key (DER)\">{key}</code></td></tr>",
            id = esc(&c.id),
            name = esc(&c.name),
            seen = esc(c.last_seen.as_deref().unwrap_or("-")),
            files = c.files,
            bytes = c.bytes,
            size = esc(&size(c.bytes)),
            key = esc(
                &c.key_fingerprint
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |f| f.chars().take(16).collect())
            ),
        );
    }
    if clients.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"6\">No client registered</td></tr>");
    }
    format!(
        "<div class=\"scroll\"><table id=\"clients\" class=\"sortable\"><thead><tr><th>Name</th><th>ID</th>\
         <th>Last seen (UTC)</th><th>Files</th><th>Bytes</th><th>Key fingerprint</th></tr></thead>\
         <tbody>{rows}</tbody></table></div>"
    )
}

async fn clients_page(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(number): Query<PageNumber>,
) -> Response {
    let Some(csrf) = session(&state, peer, &headers) else {
        return to_login();
    };
    let clients = match all_clients(&state).await {
        Ok(clients) => clients,
        Err(error) => return error_page(error),
    };
    let total = clients.len();
    let shown: Vec<ClientView> = clients
        .into_iter()
        .skip(number.page.saturating_mul(DEFAULT_PAGE))
        .take(DEFAULT_PAGE)
        .collect();
    let body = format!(
        "<p>{total} client(s).</p>{}{}",
        clients_table(&shown),
        pager("/clients", number.page, total)
    );
    layout("Clients", &csrf, &body).into_response()
}

fn files_table(id: &str, csrf: &str, files: &[FileView]) -> String {
    let mut rows = String::new();
    for f in files {
        let name = query_value(&f.file_name);
        let _ = write!(
            rows,
            "<tr><td data-label=\"Label\">{label}</td>\
             <td data-label=\"Size\" data-sort=\"{bytes}\">{size}</td>\
             <td data-label=\"Verified\">{verified}</td><td data-label=\"Stored at\"><code>{path}</code></td>\
             <td data-label=\"Actions\"><a class=\"button\" href=\"/clients/{id}/download?name={name}\">Download</a> \
             <form method=\"post\" action=\"/clients/{id}/delete\" class=\"inline\" data-confirm=\"Delete {label}?\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"name\" value=\"{label}\">\
             <button type=\"submit\" class=\"danger\">Delete</button></form></td></tr>",
            label = esc(&f.file_name),
            bytes = f.size.unwrap_or(0),
            size = f.size.map_or_else(|| "missing".to_owned(), size),
            verified = if f.verified { "yes" } else { "no" },
            path = esc(&f.path),
            id = esc(id),
            csrf = esc(csrf),
        );
    }
    if files.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"5\">No stored file</td></tr>");
    }
    format!(
        "<div class=\"scroll\"><table id=\"files\" class=\"sortable\"><thead><tr><th>Label</th><th>Size</th>\
         <th>Verified</th><th>Stored at</th><th>Actions</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
}

async fn client_page(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(number): Query<PageNumber>,
) -> Response {
    let Some(csrf) = session(&state, peer, &headers) else {
        return to_login();
    };
    let (client, files) = match (
        one_client(&state, &id).await,
        client_files(&state, &id).await,
    ) {
        (Ok(client), Ok(files)) => (client, files),
        (Err(error), _) | (_, Err(error)) => return error_page(error),
    };
    let total = files.len();
    let shown: Vec<FileView> = files
        .into_iter()
        .skip(number.page.saturating_mul(DEFAULT_PAGE))
        .take(DEFAULT_PAGE)
        .collect();
    let body = format!(
        "<dl class=\"facts\"><dt>ID</dt><dd><code>{id}</code></dd><dt>Last seen (UTC)</dt><dd>{seen}</dd>\
         <dt>Key fingerprint (SHA-256)</dt><dd><code class=\"wrap\">{key}</code></dd>\
         <dt>Files</dt><dd>{files} ({bytes})</dd></dl>\
         <p class=\"hint\">The server does not store a file's checksum: the protocol's cksum is \
         computed while receiving and checked by the client (900 marks it verified).</p>\
         {table}{pager}\
         <form method=\"post\" action=\"/clients/{id}/remove\" data-confirm=\"Remove {name} and all its files? The name can then be registered again.\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" class=\"danger\">Remove this client and its files</button></form>",
        id = esc(&client.id),
        seen = esc(client.last_seen.as_deref().unwrap_or("-")),
        key = esc(client.key_fingerprint.as_deref().unwrap_or("no key")),
        files = client.files,
        bytes = esc(&size(client.bytes)),
        table = files_table(&client.id, &csrf, &shown),
        pager = pager(&format!("/clients/{}", esc(&client.id)), number.page, total),
        name = esc(&client.name),
        csrf = esc(&csrf),
    );
    layout(&format!("Client {}", client.name), &csrf, &body).into_response()
}

async fn download(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Response {
    if session(&state, peer, &headers).is_none() {
        return to_login();
    }
    download_file(&state, &id, &query.name)
        .await
        .unwrap_or_else(error_page)
}

/// A form action: the session's CSRF token must come with it.
fn form_auth(
    state: &Shared,
    peer: Peer,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<(), super::ApiError> {
    let auth = authenticate(state, peer.0, headers)?;
    check_csrf(&auth, headers, Some(&form.csrf))
}

async fn delete_file(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = form_auth(&state, peer, &headers, &form) {
        return error_page(refused);
    }
    match remove_file(&state, &id, &form.name).await {
        Ok(_) => Redirect::to(&format!("/clients/{}", query_value(&id))).into_response(),
        Err(error) => error_page(error),
    }
}

async fn remove(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = form_auth(&state, peer, &headers, &form) {
        return error_page(refused);
    }
    match remove_client(&state, &id).await {
        Ok(_) => Redirect::to("/clients").into_response(),
        Err(error) => error_page(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_read_well() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(query_value("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(size(5), "5 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(pager("/clients", 0, 10), "");
        assert!(pager("/clients", 1, 120).contains("?page=2"));
        assert!(pager("/clients", 1, 120).contains("?page=0"));
    }
}
