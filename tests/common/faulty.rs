//! A raw-TCP upstream that misbehaves on purpose, below what an HTTP server library
//! would let it do: stalls, truncations, resets, endless bodies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use composio_auth::testing::StandIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the upstream answers the next requests.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A well-formed 200 with the reference's session document.
    Healthy,
    /// Accepts, reads the request, never answers.
    NeverAnswers,
    /// Sends the status line and headers, a few body bytes, then stalls.
    HeadersThenStall,
    /// Declares a body longer than what it sends, then closes.
    Truncated,
    /// Declares `len` bytes and streams them (chunked when `chunked`).
    Huge { len: usize, chunked: bool },
    /// Sends headers and part of the body, then resets the connection.
    ResetMidBody,
}

pub struct Faulty {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    requests: Arc<AtomicU64>,
    body_bytes_sent: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Faulty {
    pub async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(fault));
        let requests = Arc::new(AtomicU64::new(0));
        let body_bytes_sent = Arc::new(AtomicU64::new(0));
        let (f, r, b) = (fault.clone(), requests.clone(), body_bytes_sent.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fault = f.lock().unwrap().clone();
                tokio::spawn(answer(stream, fault, r.clone(), b.clone()));
            }
        });
        Self {
            addr,
            fault,
            requests,
            body_bytes_sent,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    fault: Fault,
    requests: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    // Read the request head.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let document = StandIn::example_document().to_string();
    let head_for = |len: usize| {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
    };
    match fault {
        Fault::Healthy => {
            let _ = stream.write_all(head_for(document.len()).as_bytes()).await;
            let _ = stream.write_all(document.as_bytes()).await;
        }
        Fault::NeverAnswers => std::future::pending().await,
        Fault::HeadersThenStall => {
            let _ = stream.write_all(head_for(document.len()).as_bytes()).await;
            let _ = stream.write_all(&document.as_bytes()[..20]).await;
            std::future::pending::<()>().await;
        }
        Fault::Truncated => {
            let _ = stream.write_all(head_for(document.len()).as_bytes()).await;
            let _ = stream
                .write_all(&document.as_bytes()[..document.len() / 2])
                .await;
        }
        Fault::ResetMidBody => {
            let _ = stream.write_all(head_for(document.len()).as_bytes()).await;
            let _ = stream
                .write_all(&document.as_bytes()[..document.len() / 2])
                .await;
            let _ = stream.flush().await;
            // Let the partial body reach the client before the reset (a reset
            // discards what the client has not read yet); nothing signals that.
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A zero linger makes the close a reset, and does not block the thread.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Fault::Huge { len, chunked } => {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_owned()
            } else {
                head_for(len)
            };
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 16 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                let written = if chunked {
                    let mut framed = format!("{n:x}\r\n").into_bytes();
                    framed.extend_from_slice(&chunk[..n]);
                    framed.extend_from_slice(b"\r\n");
                    stream.write_all(&framed).await
                } else {
                    stream.write_all(&chunk[..n]).await
                };
                if written.is_err() {
                    return; // the client hung up: what it refused was not sent
                }
                sent.fetch_add(n as u64, Ordering::SeqCst);
                left -= n;
            }
            if chunked {
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
        }
    }
}
