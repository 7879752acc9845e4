//! The accept loop and the rules of one connection: a slot out of
//! `max_connections` taken before `accept`, hyper's HTTP/1 with a bounded
//! head and a head timeout, and a send timeout on the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use super::respond::{Shared, respond};
use super::{Limits, MAX_HEAD_BYTES, Root};

/// hyper's read buffer. A head that is still incomplete when it is full
/// gets 431; twice [`MAX_HEAD_BYTES`] so that a complete head just over
/// the limit is read whole and answered 431 cleanly.
const READ_BUFFER_BYTES: usize = 2 * MAX_HEAD_BYTES;

/// Threads that read files (each read is one chunk); more reads wait for
/// one of them.
const FILE_THREADS: usize = 16;

/// Most threads that run connections. Serving files is bound by the
/// network and the disk, not by the CPU: a big machine need not start a
/// thread per core for it.
const MAX_WORKERS: usize = 4;

/// Pause after `accept` failed for want of descriptors or memory, so
/// the loop does not spin while the connection waits in the queue.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `root` on `listener` until the process is killed.
pub fn serve(
    listener: std::net::TcpListener,
    root: Root,
    limits: Limits,
    log: bool,
) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .max_blocking_threads(FILE_THREADS)
        .thread_name("berth-serve")
        .build()
        .context("starting the server's runtime")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let shared = Arc::new(Shared { root, log });
    runtime.block_on(accept_loop(listener, shared, limits))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("registering the listener")?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        // Past the limit the loop stops accepting: new connections wait
        // in the kernel's listen queue, which costs this process nothing.
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("the connection slots were closed")?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if shared.log {
                    eprintln!("berth: accepting a connection: {e}");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let connection = connection(&http, stream, peer, &shared, limits);
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// Serves one connection to its end.
fn connection(
    http: &http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    limits: Limits,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let mut io = TimeoutStream::new(stream);
    // Only writes: a read timeout would also fire while hyper watches
    // for a hang-up during a long download. Slow or missing request
    // heads are hyper's header_read_timeout.
    io.set_write_timeout(Some(limits.send_timeout));
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let shared = Arc::clone(shared);
        let served = Arc::clone(&served);
        service_fn(move |request| {
            served.store(true, Ordering::Relaxed);
            respond(request, Arc::clone(&shared))
        })
    };
    let conn = http.serve_connection(TokioIo::new(Box::pin(io)), service);
    let log = shared.log;
    async move {
        if let Err(e) = conn.await {
            // The head timeout after a response is the end of an idle
            // keep-alive connection, not a fault; a send timeout is.
            let idle = e.is_timeout() && !is_io_error(&e) && served.load(Ordering::Relaxed);
            if log && !idle {
                eprintln!("berth: {peer}: {}", with_causes(&e));
            }
        }
    }
}

/// Whether `e` comes from the socket (such as the send timeout) rather
/// than from hyper's own rules (such as the head timeout).
fn is_io_error(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// `e` and its causes on one line: hyper's own text leaves the cause out
/// ("error writing a body to connection", but not that it timed out).
fn with_causes(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
