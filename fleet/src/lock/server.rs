//! The lock server on HTTP: FleetLock's two `POST` endpoints and three
//! read-only views, served by hyper's HTTP/1 on a small tokio runtime.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/pre-reboot` | 200, empty, when granted or already held |
//! | `POST /v1/steady-state` | 200, empty, when released or not held |
//! | `GET /v1/locks` | JSON `{"groups":[{group, configured_slots, slots, holders, mod_revision}]}` |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `GET /health` | 200 `{"health":"true"}` when etcd answers a linearizable read, else 503 |
//!
//! Errors are JSON `{"kind","value"}` ([`ApiError`] lists the kinds).
//!
//! Why hyper, as `berth serve` uses it: a fleet's hosts keep their
//! connections open between requests (Zincati's reqwest and the agent's
//! ureq both pool them), so the server holds about one idle connection
//! per host. tiny_http, used here before, runs each connection on a
//! thread of a pool whose count of idle threads goes stale under a burst
//! of new connections: the next connection's task then waits in the
//! queue, unserved, until some other client hangs up. 77 of 400
//! connections opened at once went unanswered for 20 s
//! (`open_keep_alive_connections_do_not_starve_new_ones`), and the
//! 1,000-host benchmark saw 15 requests time out. One runtime holds
//! thousands of idle connections in two threads; the etcd work of each
//! request runs on the runtime's blocking threads, at most [`WORKERS`]
//! at once, and the rest wait their turn in order.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, header};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::protocol::{PROTOCOL_HEADER, Request};

use super::service::{ApiError, Endpoint, Service};
use super::store::KEY_PREFIX;

/// The largest request body read (a FleetLock body is well under 1 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;
/// How many requests are worked on (against etcd) at once.
pub const WORKERS: usize = 32;
/// Connections held at once; past it, new ones wait in the listen queue.
/// A fleet keeps about one per host.
pub const MAX_CONNECTIONS: usize = 4096;
/// The listen queue: a fleet's hosts may all connect at the same moment
/// (after the server restarts), more than std's default of 128.
const BACKLOG: u32 = 1024;
/// How long a request head may take, and so how long an idle keep-alive
/// connection is kept: long enough that a host asking every few seconds
/// (a refused `pre-reboot` is retried) reuses its connection, short
/// enough that a client that connects and sends nothing soon lets go.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request head: hyper answers 431 past it.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Threads that run connections (HTTP only; etcd work is elsewhere).
const IO_THREADS: usize = 2;
/// How long [`Server::shutdown`] lets requests under way finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after `accept` failed (out of descriptors), so the loop does
/// not spin while the connection waits in the queue.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {message}")]
pub struct ServeError {
    /// The address asked for.
    pub address: String,
    /// Why not.
    pub message: String,
}

/// A running lock server. Dropping it stops it, as
/// [`Server::shutdown`] does; [`Server::wait`] serves on.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    accept: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on the service's configured address and port and starts
    /// accepting connections.
    pub fn start(service: Service) -> Result<Server, ServeError> {
        let config = service.config();
        let address = if config.address.contains(':') && !config.address.starts_with('[') {
            format!("[{}]:{}", config.address, config.port)
        } else {
            format!("{}:{}", config.address, config.port)
        };
        let fail = |message: String| ServeError {
            address: address.clone(),
            message,
        };
        let wanted = address
            .to_socket_addrs()
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("the name has no address".into()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .max_blocking_threads(WORKERS)
            .enable_all()
            .thread_name("fleet-lock")
            .build()
            .map_err(|e| fail(format!("starting the runtime: {e}")))?;
        let listener = runtime
            .block_on(async { listen(wanted) })
            .map_err(|e| fail(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let accept = runtime.spawn(accept_loop(listener, Arc::new(service)));
        Ok(Server {
            runtime,
            accept,
            addr,
        })
    }

    /// The address listened on (with the actual port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and requests, lets the etcd work under
    /// way finish (up to a few seconds), and returns.
    pub fn shutdown(self) {
        self.accept.abort();
        self.runtime.shutdown_timeout(SHUTDOWN_GRACE);
    }

    /// Serves until the accept loop ends (that is, forever unless the
    /// runtime fails).
    pub fn wait(self) {
        let Server {
            runtime, accept, ..
        } = self;
        let _ = runtime.block_on(accept);
    }
}

/// A listening socket with room in its queue for a fleet connecting at
/// once (std's listener has 128).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(listener: tokio::net::TcpListener, service: Arc<Service>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(2 * MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("fleet-lock: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Arc::clone(&service);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| answer(request, Arc::clone(&service))),
        );
        tokio::spawn(async move {
            // A client that hangs up or idles past the head timeout ends
            // its connection; neither is the server's fault.
            let _ = conn.await;
            drop(slot);
        });
    }
}

/// A request as the handlers see it, its body already read.
struct Received {
    method: Method,
    path: String,
    /// The `fleet-lock-protocol` header, trimmed.
    protocol: Option<String>,
    body: Result<Bytes, ApiError>,
}

/// An answer before it becomes HTTP.
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    allow: Option<&'static str>,
    body: Vec<u8>,
}

impl Answer {
    fn empty() -> Answer {
        Answer {
            status: 200,
            content_type: None,
            allow: None,
            body: Vec::new(),
        }
    }

    fn text(content_type: &'static str, text: String) -> Answer {
        Answer {
            content_type: Some(content_type),
            body: text.into_bytes(),
            ..Answer::empty()
        }
    }

    fn into_http(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::OK);
        let headers = response.headers_mut();
        if let Some(t) = self.content_type {
            headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(t));
        }
        if let Some(a) = self.allow {
            headers.insert(header::ALLOW, header::HeaderValue::from_static(a));
        }
        response
    }
}

fn json(status: u16, body: &impl serde::Serialize) -> Answer {
    Answer {
        status,
        content_type: Some("application/json"),
        allow: None,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

fn error(e: &ApiError) -> Answer {
    json(
        e.status,
        &crate::protocol::ErrorBody {
            kind: e.kind.to_string(),
            value: e.value.clone(),
        },
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        413,
        "bad_request",
        format!("the body is over {BODY_LIMIT} bytes"),
    )
}

/// Reads one request's body (bounded), answers it on a blocking thread
/// (its etcd calls block), and logs its outcome.
async fn answer(
    request: hyper::Request<Incoming>,
    service: Arc<Service>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let protocol = request
        .headers()
        .get(PROTOCOL_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        Err(too_large())
    } else {
        match Limited::new(request.into_body(), BODY_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ApiError::new(
                400,
                "bad_request",
                format!("reading the body: {e}"),
            )),
        }
    };
    let received = Received {
        method,
        path,
        protocol,
        body,
    };
    let worked = tokio::task::spawn_blocking(move || {
        let (answer, log) = route(&service, &received);
        (answer, log, received)
    })
    .await;
    let (answer, log, received) = match worked {
        Ok(done) => done,
        Err(e) => {
            let e = ApiError::new(500, "internal", format!("the request's work failed: {e}"));
            eprintln!("fleet-lock: {}", e.value);
            return Ok(error(&e).into_http());
        }
    };
    eprintln!(
        "fleet-lock: {} {} {} {log} ({} ms)",
        received.method,
        received.path,
        answer.status,
        start.elapsed().as_millis()
    );
    Ok(answer.into_http())
}

fn route(service: &Service, request: &Received) -> (Answer, String) {
    let (method, path) = (&request.method, request.path.as_str());
    let endpoint = match path {
        "/v1/pre-reboot" => Some(Endpoint::PreReboot),
        "/v1/steady-state" => Some(Endpoint::SteadyState),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        if *method != Method::POST {
            return not_allowed("POST");
        }
        return fleet_lock(service, endpoint, request);
    }
    if !matches!(path, "/v1/locks" | "/metrics" | "/health") {
        let e = ApiError::new(404, "not_found", format!("no {path} here"));
        return (error(&e), e.kind.to_string());
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        return not_allowed("GET, HEAD");
    }
    let result = match path {
        "/v1/locks" => service
            .view()
            .map(|groups| json(200, &serde_json::json!({ "groups": groups }))),
        "/metrics" => metrics(service).map(|text| Answer::text("text/plain; version=0.0.4", text)),
        _ => health(service),
    };
    match result {
        Ok(answer) => (answer, "ok".into()),
        Err(e) => (error(&e), format!("{}: {}", e.kind, e.value)),
    }
}

fn not_allowed(allow: &'static str) -> (Answer, String) {
    let e = ApiError::new(405, "method_not_allowed", format!("use {allow}"));
    let answer = Answer {
        allow: Some(allow),
        ..error(&e)
    };
    (answer, e.kind.to_string())
}

/// Checks a FleetLock request, then runs it.
fn fleet_lock(service: &Service, endpoint: Endpoint, request: &Received) -> (Answer, String) {
    let params = match read_params(request) {
        Ok(p) => p,
        Err(e) => {
            service.count(endpoint, e.kind);
            return (error(&e), format!("{}: {}", e.kind, e.value));
        }
    };
    let who = format!("group={} id={}", params.group, params.id);
    match service.handle(endpoint, &params) {
        Ok(outcome) => (Answer::empty(), format!("{who}: {}", outcome.name())),
        Err(e) => (error(&e), format!("{who}: {}: {}", e.kind, e.value)),
    }
}

fn read_params(request: &Received) -> Result<crate::protocol::ClientParams, ApiError> {
    match request.protocol.as_deref() {
        Some(v) if v.eq_ignore_ascii_case("true") => {}
        Some(v) => {
            return Err(ApiError::new(
                400,
                "bad_request",
                format!("header {PROTOCOL_HEADER} is {v:?}, not \"true\""),
            ));
        }
        None => {
            return Err(ApiError::new(
                400,
                "bad_request",
                format!("header {PROTOCOL_HEADER}: true is missing"),
            ));
        }
    }
    let body = request.body.as_ref().map_err(Clone::clone)?;
    let parsed: Request = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "bad_request",
            format!("the body is not {{\"client_params\":{{\"id\",\"group\"}}}}: {e}"),
        )
    })?;
    Ok(parsed.client_params)
}

fn health(service: &Service) -> Result<Answer, ApiError> {
    service
        .store()
        .client()
        .get(KEY_PREFIX.as_bytes())
        .map_err(|e| ApiError::from(super::store::LockError::from(e)))?;
    Ok(json(200, &serde_json::json!({"health": "true"})))
}

/// A label value in Prometheus' text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics, in Prometheus' text format 0.0.4: per group the slots and
/// holders read from etcd now, the configured slots, and the request
/// counters since start.
fn metrics(service: &Service) -> Result<String, ApiError> {
    let groups = service.view()?;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let per_group = |f: &dyn Fn(&super::service::GroupView) -> Option<u64>| {
        groups
            .iter()
            .filter_map(|g| f(g).map(|v| (format!("group=\"{}\"", label(&g.group)), v.to_string())))
            .collect()
    };
    family(
        "berth_fleetlock_slots",
        "gauge",
        "Reboot slots of the group as its etcd key records them.",
        per_group(&|g| Some(u64::from(g.slots))),
    );
    family(
        "berth_fleetlock_holders",
        "gauge",
        "Hosts holding a reboot slot of the group, read from etcd.",
        per_group(&|g| Some(g.holders.len() as u64)),
    );
    family(
        "berth_fleetlock_configured_slots",
        "gauge",
        "Reboot slots of the group in this server's configuration.",
        per_group(&|g| g.configured_slots.map(u64::from)),
    );
    family(
        "berth_fleetlock_requests_total",
        "counter",
        "FleetLock requests answered by this server, by endpoint and outcome.",
        service
            .counts()
            .into_iter()
            .map(|((endpoint, outcome), n)| {
                (
                    format!("endpoint=\"{}\",outcome=\"{}\"", endpoint.name(), outcome),
                    n.to_string(),
                )
            })
            .collect(),
    );
    Ok(out)
}
