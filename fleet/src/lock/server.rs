//! The lock server on HTTP: FleetLock's two `POST` endpoints and three
//! read-only views, served by `tiny_http`.
//!
//! Why tiny_http: it is blocking (like the rest of this crate; no async
//! runtime), parses HTTP/1.1 itself with keep-alive and chunked bodies,
//! reads each connection on a thread of its own pool, and brings four
//! small dependencies. The requests go to a fixed pool of worker threads
//! here, so many clients at once are served while etcd work stays bounded.
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

use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Response};

use crate::protocol::{PROTOCOL_HEADER, Request};

use super::service::{ApiError, Endpoint, Service};
use super::store::KEY_PREFIX;

/// The largest request body read (a FleetLock body is well under 1 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;
/// How many requests are worked on at once.
pub const WORKERS: usize = 32;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {message}")]
pub struct ServeError {
    /// The address asked for.
    pub address: String,
    /// Why not.
    pub message: String,
}

/// A running lock server. Dropping it does not stop it; call
/// [`Server::shutdown`] or [`Server::wait`].
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
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
    /// the workers.
    pub fn start(service: Service) -> Result<Server, ServeError> {
        let config = service.config();
        let address = if config.address.contains(':') && !config.address.starts_with('[') {
            format!("[{}]:{}", config.address, config.port)
        } else {
            format!("{}:{}", config.address, config.port)
        };
        let http = tiny_http::Server::http(&address).map_err(|e| ServeError {
            address: address.clone(),
            message: e.to_string(),
        })?;
        let addr = http.server_addr().to_ip().ok_or_else(|| ServeError {
            address: address.clone(),
            message: "not an IP socket".into(),
        })?;
        let http = Arc::new(http);
        let service = Arc::new(service);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|_| {
                let (http, service, stop) = (http.clone(), service.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(request)) => serve(&service, request),
                            Ok(None) => {}
                            Err(e) => {
                                eprintln!("fleet-lock: accepting requests: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Server {
            http,
            addr,
            stop,
            workers,
        })
    }

    /// The address listened on (with the actual port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, finishes the ones being worked on, returns.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.http.unblock();
        self.wait();
    }

    /// Serves until the workers stop (that is, forever unless shut down).
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

type Answer = Response<std::io::Cursor<Vec<u8>>>;

/// `answer` with a header added (names and values here are ASCII
/// constants, which tiny_http always accepts).
fn with_header(mut answer: Answer, name: &str, value: &str) -> Answer {
    if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        answer.add_header(h);
    }
    answer
}

fn json(status: u16, body: &impl serde::Serialize) -> Answer {
    with_header(
        Response::from_data(serde_json::to_vec(body).unwrap_or_default()).with_status_code(status),
        "content-type",
        "application/json",
    )
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

/// Answers one request and logs its outcome.
fn serve(service: &Service, mut request: tiny_http::Request) {
    let start = Instant::now();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let (answer, log) = route(service, &method, &path, &mut request);
    let status = answer.status_code().0;
    eprintln!(
        "fleet-lock: {method} {path} {status} {log} ({} ms)",
        start.elapsed().as_millis()
    );
    if let Err(e) = request.respond(answer) {
        eprintln!("fleet-lock: {method} {path}: answering: {e}");
    }
}

fn route(
    service: &Service,
    method: &Method,
    path: &str,
    request: &mut tiny_http::Request,
) -> (Answer, String) {
    let endpoint = match path {
        "/v1/pre-reboot" => Some(Endpoint::PreReboot),
        "/v1/steady-state" => Some(Endpoint::SteadyState),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        if *method != Method::Post {
            return not_allowed("POST");
        }
        return fleet_lock(service, endpoint, request);
    }
    if !matches!(path, "/v1/locks" | "/metrics" | "/health") {
        let e = ApiError::new(404, "not_found", format!("no {path} here"));
        return (error(&e), e.kind.to_string());
    }
    if !matches!(method, Method::Get | Method::Head) {
        return not_allowed("GET, HEAD");
    }
    let result = match path {
        "/v1/locks" => service
            .view()
            .map(|groups| json(200, &serde_json::json!({ "groups": groups }))),
        "/metrics" => metrics(service).map(|text| {
            with_header(
                Response::from_string(text),
                "content-type",
                "text/plain; version=0.0.4",
            )
        }),
        _ => health(service),
    };
    match result {
        Ok(answer) => (answer, "ok".into()),
        Err(e) => (error(&e), format!("{}: {}", e.kind, e.value)),
    }
}

fn not_allowed(allow: &str) -> (Answer, String) {
    let e = ApiError::new(405, "method_not_allowed", format!("use {allow}"));
    (with_header(error(&e), "allow", allow), e.kind.to_string())
}

/// Reads and checks a FleetLock request, then runs it.
fn fleet_lock(
    service: &Service,
    endpoint: Endpoint,
    request: &mut tiny_http::Request,
) -> (Answer, String) {
    let params = match read_params(request) {
        Ok(p) => p,
        Err(e) => {
            service.count(endpoint, e.kind);
            return (error(&e), format!("{}: {}", e.kind, e.value));
        }
    };
    let who = format!("group={} id={}", params.group, params.id);
    match service.handle(endpoint, &params) {
        Ok(outcome) => (
            Response::from_data(Vec::new()).with_status_code(200),
            format!("{who}: {}", outcome.name()),
        ),
        Err(e) => (error(&e), format!("{who}: {}: {}", e.kind, e.value)),
    }
}

fn read_params(
    request: &mut tiny_http::Request,
) -> Result<crate::protocol::ClientParams, ApiError> {
    let proto = request
        .headers()
        .iter()
        .find(|h| h.field.equiv(PROTOCOL_HEADER))
        .map(|h| h.value.as_str().trim().to_string());
    match proto.as_deref() {
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
    let too_large = || {
        ApiError::new(
            413,
            "bad_request",
            format!("the body is over {BODY_LIMIT} bytes"),
        )
    };
    if request.body_length().is_some_and(|n| n > BODY_LIMIT) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, "bad_request", format!("reading the body: {e}")))?;
    if body.len() > BODY_LIMIT {
        return Err(too_large());
    }
    let parsed: Request = serde_json::from_slice(&body).map_err(|e| {
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
