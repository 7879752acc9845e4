//! Response bodies: a short text, or a file streamed in chunks so that an
//! object of any size costs one chunk of memory at a time.
//!
//! A chunk is read by a blocking-pool thread (`pread`), because tokio has
//! no asynchronous file I/O on Linux; hyper asks for the next chunk only
//! once the socket took the previous one, so a client that stops reading
//! stops the reads too.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::task::JoinHandle;

/// Bytes read from a file at a time. Large enough that a blocking-pool
/// round trip per chunk costs little, small enough that thousands of
/// downloads at once stay within memory.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// The body of a response.
pub enum Body {
    /// Bytes at hand (an error text; empty for HEAD), sent once.
    Bytes(Option<Bytes>),
    /// A file's first `remaining` bytes from `offset`.
    File(FileBody),
}

impl Body {
    /// A short text body.
    pub fn text(text: &'static str) -> Body {
        Body::Bytes(Some(Bytes::from_static(text.as_bytes())))
    }

    /// No body.
    pub fn empty() -> Body {
        Body::Bytes(None)
    }

    /// The first `len` bytes of `file`.
    pub fn file(file: File, len: u64) -> Body {
        Body::File(FileBody {
            file: Arc::new(file),
            offset: 0,
            remaining: len,
            reading: None,
        })
    }
}

/// A file being sent.
pub struct FileBody {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File(file) => file.poll_chunk(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Bytes(bytes) => bytes.is_none(),
            Body::File(file) => file.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::File(file) => SizeHint::with_exact(file.remaining),
        }
    }
}

impl FileBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let reading = self.reading.get_or_insert_with(|| {
            let file = Arc::clone(&self.file);
            let offset = self.offset;
            let len = self.remaining.min(CHUNK_BYTES as u64) as usize;
            tokio::task::spawn_blocking(move || {
                let mut chunk = vec![0; len];
                // A file cut short while it is sent ends the response
                // with an error (hyper then drops the connection), never
                // with fewer bytes than its Content-Length promised.
                file.read_exact_at(&mut chunk, offset)?;
                Ok(Bytes::from(chunk))
            })
        });
        let result = ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
        };
        self.offset += chunk.len() as u64;
        self.remaining -= chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_file_body_is_the_file_in_chunks() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 100).map(|i| i as u8).collect();
        std::io::Write::write_all(&mut file, &data).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut body = Body::file(file, data.len() as u64);
        let mut got = Vec::new();
        let mut chunks = 0;
        runtime.block_on(async {
            while let Some(frame) = body.frame().await {
                let chunk = frame.unwrap().into_data().unwrap();
                assert!(chunk.len() <= CHUNK_BYTES);
                got.extend_from_slice(&chunk);
                chunks += 1;
            }
        });
        assert_eq!(chunks, 3);
        assert_eq!(got, data);
    }

    #[test]
    fn a_file_shorter_than_promised_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"short").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut body = Body::file(file, 10);
        let frame = runtime.block_on(body.frame()).unwrap();
        assert_eq!(frame.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
