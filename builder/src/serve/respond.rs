//! One request, one response: GET and HEAD of a regular file under the
//! repository, a clear status for everything else, one log line each
//! (`berth: GET /path 200`, which the upgrade tests read).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::{Body as _, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::body::Body;
use super::open::{Refusal, Root};
use super::target::{self, Refused};

/// What every request needs: the repository and whether to log.
pub struct Shared {
    /// The repository.
    pub root: Root,
    /// Log one line per request on stderr.
    pub log: bool,
}

/// Answers `request`.
pub async fn respond(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let response = answer(&request, &shared).await;
    if shared.log {
        let target = request
            .uri()
            .path_and_query()
            .map_or(request.uri().path(), |p| p.as_str());
        eprintln!(
            "berth: {} {} {}",
            target::loggable(method.as_str()),
            target::loggable(target),
            response.status().as_u16()
        );
    }
    Ok(response)
}

async fn answer(request: &Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut response = status(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    };
    let mut response = match target::relative_path(request.uri().path()) {
        Err(Refused::BadRequest) => status(StatusCode::BAD_REQUEST, "bad request path\n"),
        Err(Refused::Forbidden) => status(StatusCode::FORBIDDEN, "path leaves the repository\n"),
        Ok(relative) => {
            let opener = Arc::clone(shared);
            // openat2 and fstat can block (a slow disk, NFS): off the
            // runtime's threads.
            let opened =
                tokio::task::spawn_blocking(move || opener.root.open_file(&relative)).await;
            match opened {
                Ok(Ok((file, len))) => file_response(file, len, head),
                Ok(Err(Refusal::NotFound)) => status(StatusCode::NOT_FOUND, "not found\n"),
                Ok(Err(Refusal::Forbidden)) => status(StatusCode::FORBIDDEN, "not served\n"),
                Ok(Err(Refusal::Busy)) => {
                    status(StatusCode::SERVICE_UNAVAILABLE, "out of file descriptors\n")
                }
                Ok(Err(Refusal::Failed(e))) => {
                    eprintln!(
                        "berth: reading {}: {e}",
                        target::loggable(request.uri().path())
                    );
                    status(StatusCode::INTERNAL_SERVER_ERROR, "read error\n")
                }
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "read error\n"),
            }
        }
    };
    // A request body is never read; hyper would have to skip it to keep
    // the connection, so close it instead.
    if !request.body().is_end_stream() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn file_response(file: std::fs::File, len: u64, head: bool) -> Response<Body> {
    let body = if head {
        Body::empty()
    } else {
        Body::file(file, len)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::text(text));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
