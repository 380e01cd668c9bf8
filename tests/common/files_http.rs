//! A static file server on 127.0.0.1, standing in for an object store reached by an
//! `http://` URL: `GET` and `HEAD` of the files of one folder, with `Range: bytes=a-b` answered
//! `206` (what object_store's HTTP store asks of a server), `404` for anything else, every
//! request logged. It runs on its own threads, so a test may block on a child process (the
//! CLI) while it serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct FileServer {
    pub addr: SocketAddr,
    /// `METHOD /path` of every request, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serve the files under `root`.
    pub fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, log, halt) = (root.to_path_buf(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(socket) = socket else { continue };
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(socket, &root, &log);
                });
            }
        });
        FileServer {
            addr,
            requests,
            stop,
        }
    }

    /// The URL of `rel` (a path under the served folder).
    pub fn url(&self, rel: &str) -> String {
        format!("http://{}/{rel}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(socket: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut out = socket;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut range = None;
        let mut body_len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "content-length" => body_len = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; body_len];
        reader.read_exact(&mut body)?;
        log.lock().unwrap().push(format!("{method} {target}"));
        let file = file_of(root, &target);
        let data = match (&method[..], file.and_then(|p| std::fs::read(p).ok())) {
            ("GET" | "HEAD", Some(data)) => data,
            _ => {
                out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
                continue;
            }
        };
        let total = data.len();
        let (status, slice, content_range) = match range.as_deref().and_then(|r| span(r, total)) {
            Some((a, b)) => (
                "206 Partial Content",
                &data[a..=b],
                Some(format!("bytes {a}-{b}/{total}")),
            ),
            None => ("200 OK", &data[..], None),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/csv\r\naccept-ranges: bytes\r\ncontent-length: {}\r\nlast-modified: Mon, 01 Jan 2024 00:00:00 GMT\r\netag: \"{total}\"\r\n",
            slice.len()
        );
        if let Some(r) = content_range {
            head.push_str(&format!("content-range: {r}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method == "GET" {
            out.write_all(slice)?;
        }
        out.flush()?;
    }
}

/// The file a request path names under `root` (no `..`, no query).
fn file_of(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split('?').next()?.trim_start_matches('/');
    if path.split('/').any(|s| s == ".." || s == ".") {
        return None;
    }
    let p = root.join(path);
    p.is_file().then_some(p)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` as an inclusive span of a body of `total` bytes.
fn span(range: &str, total: usize) -> Option<(usize, usize)> {
    let spec = range.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let last = total.checked_sub(1)?;
    let (a, b) = match (a.trim(), b.trim()) {
        ("", n) => (total.saturating_sub(n.parse().ok()?), last),
        (a, "") => (a.parse().ok()?, last),
        (a, b) => (a.parse().ok()?, b.parse::<usize>().ok()?.min(last)),
    };
    (a <= b).then_some((a, b))
}
