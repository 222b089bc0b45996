//! Accepting connections: each is looked at (or its TLS handshake done) in a task of its own, so
//! a slow client never holds up the others, then handed to the HTTP server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

pub(crate) type Tls = Option<std::sync::Arc<tokio_rustls::TlsAcceptor>>;

pub(crate) struct Incoming {
    rx: mpsc::Receiver<(Box<dyn Conn>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = Box<dyn Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

pub(crate) fn incoming(listener: TcpListener, tls: Tls) -> std::io::Result<Incoming> {
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn: Box<dyn Conn> = match tls {
                    Some(acc) => {
                        match tokio::time::timeout(Duration::from_secs(30), acc.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                eprintln!("TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                    None => {
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(Duration::from_secs(60), stream.peek(&mut first))
                            .await
                        {
                            Ok(Ok(1)) if first[0] == 0x16 => {
                                refuse_tls(stream).await;
                                return;
                            }
                            Ok(Ok(_)) => Box::new(stream),
                            _ => return,
                        }
                    }
                };
                let _ = tx.send((conn, peer)).await;
            });
        }
    });
    Ok(Incoming { rx, addr })
}

/// A TLS client on the plain-HTTP port (clients that try HTTPS first, as docker does): answer as
/// Go's server does, then read until the client closes, so its alert does not hit a closed socket.
async fn refuse_tls(mut s: TcpStream) {
    let _ = s
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        )
        .await;
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
