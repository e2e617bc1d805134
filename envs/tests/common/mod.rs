//! Helpers of the protocol tests: misbehaving loopback servers and the Python fixture.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use g2po_envs::agentgym::{AgentGymSpec, ServerProcess, find_env_python};

/// How a [`FaultyServer`] treats each connection.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Accepts and reads, never answers.
    Silent,
    /// Answers 200 with this body.
    Body(&'static str),
    /// Answers bytes that are not HTTP.
    NotHttp,
    /// Answers a status with an HTML body (a proxy or another program on the port).
    Status(u16),
}

/// A loopback server that misbehaves in one way; it stops when dropped.
pub struct FaultyServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyServer {
    pub fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            // Bounded: the test drops the server within seconds; 60 s is a hard stop.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let reply = match fault {
                            Fault::Silent => None,
                            Fault::Body(b) => Some(format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                                b.len()
                            )),
                            Fault::NotHttp => Some("SSH-2.0-OpenSSH_9.2\r\n".to_string()),
                            Fault::Status(code) => Some(format!(
                                "HTTP/1.1 {code} Oops\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n<h1>oops</h1>"
                            )),
                        };
                        if let Some(r) = reply {
                            let _ = s.write_all(r.as_bytes());
                            let _ = s.flush();
                        }
                        held.push(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { url, stop, thread: Some(thread) }
    }

    pub fn spec(&self, options: &str) -> AgentGymSpec {
        format!("{}{options}", self.url).parse().unwrap()
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback URL where nothing listens (bound, then released).
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// The Python interpreter with the servers' packages, or `None` (the test then skips,
/// saying so) unless `G2PO_REQUIRE_ENV_SERVERS=1`, where a missing one fails the test.
pub fn env_python() -> Option<PathBuf> {
    let found = find_env_python();
    if found.is_none() {
        if std::env::var("G2PO_REQUIRE_ENV_SERVERS").as_deref() == Ok("1") {
            panic!(
                "G2PO_REQUIRE_ENV_SERVERS=1 but no Python with the servers' packages (run envs/servers/setup-venv.sh or set G2PO_ENV_PYTHON)"
            );
        }
        eprintln!("SKIP: no Python with textworld-express and minigrid (envs/servers/setup-venv.sh makes one)");
    }
    found
}

/// Starts the Python server (see [`env_python`]).
pub fn python_server(args: &[&str]) -> Option<ServerProcess> {
    let python = env_python()?;
    Some(ServerProcess::python_server(&python, args).expect("the Python server starts"))
}

/// A raw call: (status, JSON answer, or the text when it is not JSON).
pub fn raw(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        (_, Some(b)) => agent.post(url).content_type("application/json").send(b),
        (_, None) => agent.post(url).send_empty(),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// The protocol error inside `e` (a test failure for any other error).
pub fn protocol(e: g2po_envs::EnvError) -> g2po_envs::agentgym::ProtocolError {
    match e {
        g2po_envs::EnvError::Protocol(p) => p,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}
