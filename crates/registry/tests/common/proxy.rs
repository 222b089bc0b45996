//! A small HTTP/1.1 proxy for fault injection: one request per connection (it adds
//! `Connection: close`), forwarding raw bytes, with rules that answer 503, cut a request body, or
//! cut a response body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer `503 Service Unavailable` with `Retry-After: 0` without forwarding.
    ServiceUnavailable,
    /// Answer `429 Too Many Requests` with this `Retry-After` (seconds) without forwarding.
    TooManyRequests { retry_after: u64 },
    /// Read this many request-body bytes, forward them upstream when `forward`, then close both
    /// connections (a connection dropped mid-upload).
    CutRequest { after: u64, forward: bool },
    /// Forward the request, then close the client connection after this many response bytes.
    CutResponse { after: u64 },
    /// Forward the request, then stop sending after this many response bytes, holding the
    /// connection open (a stalled peer) for up to 30 s.
    StallResponse { after: u64 },
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path_contains: String,
    /// Matching requests to let through before the fault fires.
    pub skip: u32,
    /// How many times the fault fires.
    pub times: u32,
    pub fault: Fault,
}

#[derive(Default)]
pub struct State {
    rules: Mutex<Vec<Rule>>,
    /// "METHOD path" of every request seen, in order.
    pub requests: Mutex<Vec<String>>,
    /// Request-body bytes forwarded upstream.
    pub body_bytes_up: AtomicU64,
    pub faults_fired: AtomicU64,
}

pub struct Proxy {
    pub addr: String,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str, rules: Vec<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let state = Arc::new(State {
            rules: Mutex::new(rules),
            ..State::default()
        });
        let up = upstream.to_string();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let up = up.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(sock, &up, &st).await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn faults_fired(&self) -> u64 {
        self.state.faults_fired.load(Ordering::SeqCst)
    }

    pub fn body_bytes_up(&self) -> u64 {
        self.state.body_bytes_up.load(Ordering::SeqCst)
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn handle(mut client: TcpStream, upstream: &str, st: &State) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        let mut tmp = [0u8; 8192];
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if buf.first() == Some(&0x16) {
            // A TLS ClientHello: answer as a plain-HTTP server does, so clients fall back quickly.
            client
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(());
        }
        if let Some(e) = find_head_end(&buf) {
            break e;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let body_prefix = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    st.requests
        .lock()
        .map(|mut r| r.push(format!("{method} {path}")))
        .ok();
    let mut new_head = format!("{first}\r\n");
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if l.is_empty() || lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        new_head.push_str(l);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");

    let fault = {
        let mut rules = st.rules.lock().expect("rules lock");
        let mut hit = None;
        for r in rules.iter_mut() {
            if r.times > 0 && r.method == method && path.contains(&r.path_contains) {
                if r.skip > 0 {
                    r.skip -= 1;
                } else {
                    r.times -= 1;
                    hit = Some(r.fault.clone());
                }
                break;
            }
        }
        hit
    };
    if fault.is_some() {
        st.faults_fired.fetch_add(1, Ordering::SeqCst);
    }

    let refusal = match fault {
        Some(Fault::ServiceUnavailable) => Some(("503 Service Unavailable", 0, "UNAVAILABLE")),
        Some(Fault::TooManyRequests { retry_after }) => {
            Some(("429 Too Many Requests", retry_after, "TOOMANYREQUESTS"))
        }
        _ => None,
    };
    if let Some((status, retry_after, code)) = refusal {
        let body =
            format!(r#"{{"errors":[{{"code":"{code}","message":"injected by the test proxy"}}]}}"#);
        let resp = format!("HTTP/1.1 {status}\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        client.write_all(resp.as_bytes()).await?;
        let _ = client.shutdown().await;
        return Ok(());
    }

    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(new_head.as_bytes()).await?;

    if let Some(Fault::CutRequest { after, forward }) = fault {
        let mut seen = 0u64;
        let mut pending = body_prefix;
        loop {
            let take = (after - seen).min(pending.len() as u64) as usize;
            if forward && take > 0 {
                up.write_all(&pending[..take]).await?;
                st.body_bytes_up.fetch_add(take as u64, Ordering::SeqCst);
            }
            seen += take as u64;
            if seen >= after {
                break;
            }
            let mut tmp = vec![0u8; 64 << 10];
            let n = client.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            tmp.truncate(n);
            pending = tmp;
        }
        // Give the registry a moment to take what it got, then drop both sides.
        if forward {
            let _ = up.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        drop(up);
        drop(client);
        return Ok(());
    }

    if !body_prefix.is_empty() {
        up.write_all(&body_prefix).await?;
        st.body_bytes_up
            .fetch_add(body_prefix.len() as u64, Ordering::SeqCst);
    }
    let (cut, stall) = match fault {
        Some(Fault::CutResponse { after }) => (Some(after), false),
        Some(Fault::StallResponse { after }) => (Some(after), true),
        _ => (None, false),
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let counter = &st.body_bytes_up;
    let upload = async {
        let mut tmp = vec![0u8; 64 << 10];
        loop {
            let n = cr.read(&mut tmp).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            uw.write_all(&tmp[..n]).await?;
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
    };
    let download = async {
        let mut tmp = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        loop {
            let n = ur.read(&mut tmp).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let n = match cut {
                Some(c) if sent + n as u64 >= c => {
                    let keep = (c - sent) as usize;
                    cw.write_all(&tmp[..keep]).await?;
                    if stall {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    }
                    return Ok(());
                }
                _ => n,
            };
            cw.write_all(&tmp[..n]).await?;
            sent += n as u64;
        }
    };
    // The exchange ends when the registry has answered and closed (or the cut fired).
    tokio::pin!(upload);
    tokio::pin!(download);
    tokio::select! {
        r = &mut upload => { r?; (&mut download).await?; }
        r = &mut download => { r?; }
    }
    Ok(())
}
