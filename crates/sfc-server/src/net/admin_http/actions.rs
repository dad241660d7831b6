//! The file endpoints and the actions: a stored file streamed back, a file deleted, a
//! client removed (through [`crate::session::Core`]).

use super::access::{check_csrf, Authorized};
use super::api::{blocking, client_id, ApiQuery};
use super::{AdminState, ApiError, Shared};
use crate::admin::{open_stored, StoredContent};
use crate::session::Removal;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;

/// Bytes read from the store at once for a download.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// `?name=` of the file endpoints (a label may hold any character, `/` too).
#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    pub(super) name: String,
}

/// Streams a stored file back, read in pieces on the blocking pool.
pub(crate) async fn download_file(
    state: &AdminState,
    id: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let label = name.to_owned();
    let (size, reader) = blocking(move || {
        Ok(
            match open_stored(core.meta_store(), core.blob_store(), &id, &label)? {
                StoredContent::Found(reader, size) => Ok((size, reader)),
                StoredContent::NoSuchFile => Err("no such file"),
                // Missing from the store (the list shows it so): an answer, not a fault
                // of the server.
                StoredContent::Missing => Err("the file's stored content is missing"),
            },
        )
    })
    .await?
    .map_err(|why| ApiError::new(StatusCode::NOT_FOUND, why))?;
    let body = read_in_chunks(reader);
    let disposition = content_disposition(name);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// A body that reads `reader` on the blocking pool, [`DOWNLOAD_CHUNK`] bytes at a time,
/// a few pieces ahead of the client.
fn read_in_chunks(reader: Box<dyn Read + Send>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; DOWNLOAD_CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = tx.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Body::from_stream(stream)
}

/// `Content-Disposition` for a label: an ASCII fallback and the exact name (RFC 6266).
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub(super) async fn download(
    State(state): State<Shared>,
    _: Authorized,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    download_file(&state, &id, &query.name).await
}

/// What a delete removed.
#[derive(Debug, Serialize)]
pub(crate) struct Removed {
    /// The client ID.
    client_id: String,
    /// The files removed (labels).
    files: Vec<String>,
}

pub(crate) async fn remove_file(
    state: &AdminState,
    id: &str,
    name: &str,
) -> Result<Removed, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let label = name.to_owned();
    let result = blocking(move || Ok(core.admin_remove_file(&id, &label)?)).await;
    // Whatever it did: the next overview is computed after it.
    state.overview.changed_here();
    let removed = match result? {
        Removal::Removed(removed) => removed,
        Removal::NotFound => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such file")),
        Removal::Busy => return Err(busy()),
    };
    tracing::info!(client = %id.short(), file = removed.file_name.as_str(), "admin: file deleted");
    Ok(Removed {
        client_id: id.to_hex(),
        files: vec![removed.file_name],
    })
}

pub(super) async fn api_remove_file(
    State(state): State<Shared>,
    Authorized(auth): Authorized,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Json<Removed>, ApiError> {
    check_csrf(&auth, &headers, None)?;
    Ok(Json(remove_file(&state, &id, &query.name).await?))
}

pub(crate) async fn remove_client(state: &AdminState, id: &str) -> Result<Removed, ApiError> {
    let id = client_id(id)?;
    let core = Arc::clone(&state.core);
    let result = blocking(move || Ok(core.admin_remove_client(&id)?)).await;
    state.overview.changed_here();
    // Unless refused as busy, its parked upload (a connection-per-request client's,
    // between packets) is gone, also when the removal failed after that: no longer in
    // progress.
    if !matches!(result, Ok(Removal::Busy)) {
        state.monitor.client_removed(&id);
    }
    let files = match result? {
        Removal::Removed(files) => files,
        Removal::NotFound => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such client")),
        Removal::Busy => return Err(busy()),
    };
    tracing::info!(client = %id.short(), files = files.len(), "admin: client removed");
    Ok(Removed {
        client_id: id.to_hex(),
        files: files.into_iter().map(|f| f.file_name).collect(),
    })
}

pub(super) async fn api_remove_client(
    State(state): State<Shared>,
    Authorized(auth): Authorized,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    check_csrf(&auth, &headers, None)?;
    Ok(Json(remove_client(&state, &id).await?))
}

/// 409: a removal refused while a packet of the client's upload is being received or
/// stored.
fn busy() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "a file packet of this client is being received; try again when it is done",
    )
}
