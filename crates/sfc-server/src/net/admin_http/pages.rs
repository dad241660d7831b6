//! The server-rendered pages: login, dashboard, clients, one client's files, and the
//! actions (download, delete a file, remove a client) as forms that carry the session's
//! CSRF token. Everything is embedded in the binary (`static/`): no CDN, no external
//! fonts or scripts; the script only sorts tables, asks before destructive actions and
//! refreshes the dashboard's live parts from the JSON API.
//!
//! The handlers gather what a page shows and render its template (`templates.rs`, the
//! askama templates in `templates/admin/`, which HTML-escape every value they print).

use super::access::{authenticate, check_csrf, login_failed, Auth, Authorized};
use super::actions::{download_file, remove_client, remove_file, FileQuery};
use super::api::{all_clients, client_files, one_client, stats, uploads};
use super::auth::same_secret;
use super::idle::Refusable;
use super::login_limit;
use super::templates::{
    query_value, render, ClientPage, ClientsPage, DashboardPage, ErrorPage, LoginPage, Pager,
};
use super::{Peer, Shared, DEFAULT_PAGE};
use crate::admin::FailureView;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
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

/// Who views a page: the CSRF token of their session. Without credentials the browser
/// goes to the login form, before the page's path or query is read ([`Authorized`]).
struct Viewer(String);

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        match Authorized::from_request_parts(parts, state).await {
            Ok(Authorized(Auth::Session { csrf, .. })) => Ok(Viewer(csrf)),
            // Pages are for browsers; a bearer token gets the page without forms that work.
            Ok(Authorized(Auth::Bearer)) => Ok(Viewer(String::new())),
            Err(_) => Err(to_login()),
        }
    }
}

/// Who submits a form action: refused with an error page before the form is read
/// ([`Authorized`]); the form's CSRF token is checked once it is.
struct Actor(Auth);

impl FromRequestParts<Shared> for Actor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        Authorized::from_request_parts(parts, state)
            .await
            .map(|Authorized(auth)| Actor(auth))
            .map_err(error_page)
    }
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn error_page(error: super::ApiError) -> Response {
    let page = ErrorPage {
        status: error.0,
        message: &error.1,
    };
    let mut response = render(error.0, &page);
    super::add_refusal_headers(error.0, response.headers_mut());
    response
}

// ----- login ------------------------------------------------------------------------------

async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let mut response = render(status, &LoginPage { message });
    super::add_refusal_headers(status, response.headers_mut());
    response
}

/// A request no browser says came from another origin: its `Sec-Fetch-Site` is
/// `same-origin`, `none` (typed or bookmarked) or absent (a program, an old browser).
/// As an extractor before the form, a login posted by another site's page (or another
/// port's: `same-site`) is refused unread with 403, so that a page the operator has open
/// cannot spend the failed logins of the operator's own address.
struct FromThisOrigin;

impl<S: Send + Sync> FromRequestParts<S> for FromThisOrigin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let site = parts.headers.get("sec-fetch-site");
        if site.is_none_or(|site| matches!(site.as_bytes(), b"same-origin" | b"none")) {
            Ok(FromThisOrigin)
        } else {
            Err(login_page(
                StatusCode::FORBIDDEN,
                "A login from another site's page is refused.",
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    connection: Option<Extension<Refusable>>,
    _: FromThisOrigin,
    Form(form): Form<LoginForm>,
) -> Response {
    // The right token gets in even beyond the failure limit, after the same wait as a
    // wrong one (see `authenticate`).
    super::access::wait_if_blocked(&state, peer.0, connection.as_deref()).await;
    let now = Instant::now();
    if !same_secret(form.token.trim(), &state.token) {
        if state.failed_logins.blocked(peer.0.ip(), now) {
            super::access::login_refused(&state, peer.0, "wrong token at the login form");
            return login_page(StatusCode::TOO_MANY_REQUESTS, &login_limit::refusal_text());
        }
        login_failed(&state, peer.0, "wrong token at the login form");
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
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

#[derive(Debug, Default, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

/// The form of an action that needs only the CSRF token, which a script may send as the
/// `X-CSRF-Token` header with no form at all (an empty one then).
fn token_form(form: Result<Form<CsrfForm>, FormRejection>) -> CsrfForm {
    form.map(|Form(form)| form).unwrap_or_default()
}

/// Ends the session, if the request has one, and sends the browser to the login form in
/// any case. The form (its CSRF token) is read only once the session is known, as every
/// other request's is read only after its credentials are checked.
async fn logout(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    if let Ok(auth @ Auth::Session { .. }) = authenticate(&state, peer.0, &headers, None).await {
        use axum::extract::FromRequest;
        let form = token_form(Form::<CsrfForm>::from_request(request, &state).await);
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

async fn dashboard(State(state): State<Shared>, Viewer(csrf): Viewer) -> Response {
    let (stats, uploads) = match (stats(&state).await, uploads(&state).await) {
        (Ok(stats), Ok(uploads)) => (stats, uploads),
        (Err(error), _) | (_, Err(error)) => return error_page(error),
    };
    let failures: Vec<FailureView> = state
        .monitor
        .snapshot()
        .failures
        .into_iter()
        .take(20)
        .collect();
    let page = DashboardPage {
        title: "Dashboard",
        csrf: &csrf,
        stats: &stats,
        uploads: &uploads,
        failures: &failures,
    };
    render(StatusCode::OK, &page)
}

#[derive(Debug, Deserialize)]
struct PageNumber {
    #[serde(default)]
    page: usize,
}

/// The items of one page of a list.
fn one_page<T: Clone>(items: &[T], page: usize) -> Vec<T> {
    items
        .iter()
        .skip(page.saturating_mul(DEFAULT_PAGE))
        .take(DEFAULT_PAGE)
        .cloned()
        .collect()
}

async fn clients_page(
    State(state): State<Shared>,
    Viewer(csrf): Viewer,
    Query(number): Query<PageNumber>,
) -> Response {
    let clients = match all_clients(&state).await {
        Ok(clients) => clients,
        Err(error) => return error_page(error),
    };
    let total = clients.len();
    let page = ClientsPage {
        title: "Clients",
        csrf: &csrf,
        total,
        clients: &one_page(&clients, number.page),
        pager: Pager::new("/clients".to_owned(), number.page, total),
    };
    render(StatusCode::OK, &page)
}

async fn client_page(
    State(state): State<Shared>,
    Viewer(csrf): Viewer,
    Path(id): Path<String>,
    Query(number): Query<PageNumber>,
) -> Response {
    let offset = number.page.saturating_mul(DEFAULT_PAGE);
    let (client, (total, files)) = match (
        one_client(&state, &id).await,
        client_files(&state, &id, offset, DEFAULT_PAGE).await,
    ) {
        (Ok(client), Ok(files)) => (client, files),
        (Err(error), _) | (_, Err(error)) => return error_page(error),
    };
    let page = ClientPage {
        title: &format!("Client {}", client.name),
        csrf: &csrf,
        client: &client,
        files: &files,
        pager: Pager::new(format!("/clients/{}", client.id), number.page, total),
    };
    render(StatusCode::OK, &page)
}

async fn download(
    State(state): State<Shared>,
    _: Viewer,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Response {
    download_file(&state, &id, &query.name)
        .await
        .unwrap_or_else(error_page)
}

async fn delete_file(
    State(state): State<Shared>,
    Actor(auth): Actor,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = check_csrf(&auth, &headers, Some(&form.csrf)) {
        return error_page(refused);
    }
    match remove_file(&state, &id, &form.name).await {
        Ok(_) => Redirect::to(&format!("/clients/{}", query_value(&id))).into_response(),
        Err(error) => error_page(error),
    }
}

async fn remove(
    State(state): State<Shared>,
    Actor(auth): Actor,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let form = token_form(form);
    if let Err(refused) = check_csrf(&auth, &headers, Some(&form.csrf)) {
        return error_page(refused);
    }
    match remove_client(&state, &id).await {
        Ok(_) => Redirect::to("/clients").into_response(),
        Err(error) => error_page(error),
    }
}
