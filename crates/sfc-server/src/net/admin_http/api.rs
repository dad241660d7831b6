//! The JSON API's read endpoints (`/api/v1/stats`, `clients`, `files`, `uploads`,
//! `failures`) with their paging, the health checks and `/metrics`, and the helpers the
//! pages share: store work on the blocking pool and client IDs from the path.

use super::access::Authorized;
use super::overview::Freshness;
use super::{AdminState, ApiError, Shared, DEFAULT_PAGE, MAX_PAGE};
use crate::admin::{client_view, fill_sizes, unsized_file_views, ClientView, FileView, StatsView};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sfc_proto::ClientId;
use std::sync::Arc;

pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(ApiError::internal(error)),
        Err(error) => Err(ApiError::internal(error)),
    }
}

/// A query string as [`Query`] reads it, refused as the API's other errors are: 400 with
/// `{"error": …}` (axum's own rejection is plain text).
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                rejection.body_text(),
            )),
        }
    }
}

pub(super) fn client_id(text: &str) -> Result<ClientId, ApiError> {
    ClientId::from_hex(text)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not a client ID (32 hex digits)"))
}

// ----- health and metrics -----------------------------------------------------------------

/// Ready when the metadata store answers a lookup and the blob store a size query
/// (a missing file is an answer). Open to anyone (balancers probe it), so the answer names
/// only which store failed; the error itself (host names, users, buckets) goes to the log
/// ([`super::ready::Readiness`], which also spares the stores a probe per request).
pub(super) async fn readyz(State(state): State<Shared>) -> Response {
    match state.readiness.check(&state.core).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(which) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {which}\n"),
        )
            .into_response(),
    }
}

pub(super) async fn metrics(
    State(state): State<Shared>,
    _: Authorized,
) -> Result<Response, ApiError> {
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.monitor.encode(),
    )
        .into_response())
}

// ----- the JSON API -----------------------------------------------------------------------

/// `?offset=&limit=` of the list endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// One page of a list.
#[derive(Debug, Serialize)]
pub(crate) struct Page<T> {
    /// Items in the whole list.
    total: usize,
    offset: usize,
    limit: usize,
    items: Vec<T>,
}

fn page_limit(query: &PageQuery) -> usize {
    query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

fn page<T>(all: Vec<T>, query: &PageQuery) -> Page<T> {
    let limit = page_limit(query);
    let total = all.len();
    let items = all.into_iter().skip(query.offset).take(limit).collect();
    Page {
        total,
        offset: query.offset,
        limit,
        items,
    }
}

pub(crate) async fn stats(state: &AdminState) -> Result<StatsView, ApiError> {
    let clients = state
        .overview
        .clients(&state.core, Freshness::Polled)
        .await?;
    let live = state.monitor.snapshot();
    Ok(StatsView {
        clients: clients.len(),
        files: clients.iter().map(|c| c.files).sum(),
        bytes_stored: clients.iter().map(|c| c.bytes).sum(),
        connections_open: live.connections_open,
        uploads_in_progress: live.uploads.len(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

pub(super) async fn api_stats(
    State(state): State<Shared>,
    _: Authorized,
) -> Result<Json<StatsView>, ApiError> {
    Ok(Json(stats(&state).await?))
}

/// The clients with their files' counts and bytes (computed at most every few seconds:
/// [`super::overview`]).
pub(crate) async fn all_clients(state: &AdminState) -> Result<Arc<Vec<ClientView>>, ApiError> {
    state
        .overview
        .clients(&state.core, Freshness::Current)
        .await
}

pub(super) async fn api_clients(
    State(state): State<Shared>,
    _: Authorized,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<ClientView>>, ApiError> {
    let all = all_clients(&state).await?;
    let limit = page_limit(&query);
    Ok(Json(Page {
        total: all.len(),
        offset: query.offset,
        limit,
        items: all.iter().skip(query.offset).take(limit).cloned().collect(),
    }))
}

/// One client with its files' count and bytes: read for this client alone (its own
/// files sized), not through the overview of all.
pub(crate) async fn one_client(state: &AdminState, id: &str) -> Result<ClientView, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    blocking(move || client_view(core.meta_store(), core.blob_store(), &id))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such client"))
}

pub(super) async fn api_client(
    State(state): State<Shared>,
    _: Authorized,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, ApiError> {
    Ok(Json(one_client(&state, &id).await?))
}

/// One page of a client's files (`offset`, `limit`), with their sizes, and how many
/// files the client has: only the page's files are sized (a query to the store each).
pub(crate) async fn client_files(
    state: &AdminState,
    id: &str,
    offset: usize,
    limit: usize,
) -> Result<(usize, Vec<FileView>), ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    blocking(move || {
        if core.meta_store().client(&id)?.is_none() {
            return Ok(None);
        }
        let all = unsized_file_views(core.meta_store(), Some(&id))?;
        let total = all.len();
        let mut shown: Vec<FileView> = all.into_iter().skip(offset).take(limit).collect();
        fill_sizes(core.meta_store(), core.blob_store(), &mut shown);
        Ok(Some((total, shown)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such client"))
}

pub(super) async fn api_files(
    State(state): State<Shared>,
    _: Authorized,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<FileView>>, ApiError> {
    let limit = page_limit(&query);
    let (total, items) = client_files(&state, &id, query.offset, limit).await?;
    Ok(Json(Page {
        total,
        offset: query.offset,
        limit,
        items,
    }))
}

/// The uploads in progress, with the clients' names. The names come from the overview
/// as the dashboard polls it (up to a few seconds old: a client registered since shows
/// its ID alone meanwhile), so that a busy server, whose rows change all the time, is not
/// made to start a pass over the store at every poll only for names.
pub(crate) async fn uploads(state: &AdminState) -> Result<Vec<crate::admin::UploadView>, ApiError> {
    let mut uploads = state.monitor.snapshot().uploads;
    if !uploads.is_empty() {
        let clients = state
            .overview
            .clients(&state.core, Freshness::Polled)
            .await?;
        let names: std::collections::HashMap<&str, &str> = clients
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str()))
            .collect();
        for upload in &mut uploads {
            upload.client_name = names
                .get(upload.client_id.as_str())
                .map(|name| (*name).to_owned());
        }
    }
    Ok(uploads)
}

pub(super) async fn api_uploads(
    State(state): State<Shared>,
    _: Authorized,
) -> Result<Json<Vec<crate::admin::UploadView>>, ApiError> {
    Ok(Json(uploads(&state).await?))
}

pub(super) async fn api_failures(
    State(state): State<Shared>,
    _: Authorized,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<crate::admin::FailureView>>, ApiError> {
    Ok(Json(page(state.monitor.snapshot().failures, &query)))
}
