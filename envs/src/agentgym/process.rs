//! Starting and stopping environment-server programs (the tests' and benchmarks' fixture).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::EnvError;

/// The marker a server prints on standard output once it listens: `listening on URL`.
pub const LISTENING: &str = "listening on ";

/// A server program running as a child process, stopped (killed and reaped) on drop.
///
/// The program must print `listening on http://HOST:PORT` on standard output once bound;
/// `--port 0` then lets the operating system pick a free port with no race between choosing
/// and binding it. [`ServerProcess::spawn`] waits for that line and then until `GET /`
/// answers.
///
/// ```no_run
/// use g2po_envs::agentgym::{ServerProcess, find_env_python};
/// let python = find_env_python().expect("a Python with textworld-express and minigrid");
/// let server = ServerProcess::python_server(&python, &[]).unwrap();
/// println!("{}", server.url()); // http://127.0.0.1:PORT
/// ```
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// Starts `command` (its standard output is read for the `listening on` line, then
    /// drained) and waits up to `ready_timeout` for it to answer `GET /`.
    pub fn spawn(mut command: Command, ready_timeout: Duration) -> Result<Self, EnvError> {
        let started = Instant::now();
        let what = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| EnvError::Server(format!("cannot start {what}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            // Keep reading to the end so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(at) = line.find(LISTENING) {
                    sent = tx.send(line[at + LISTENING.len()..].trim().to_string()).is_ok();
                }
            }
        });
        let mut server = ServerProcess { child, url: String::new() };
        let fail = |server: &mut ServerProcess, why: String| {
            let status = server.child.try_wait().ok().flatten();
            EnvError::Server(format!(
                "{what} {why}{}",
                status.map_or_else(String::new, |s| format!(" (it exited: {s})"))
            ))
        };
        match rx.recv_timeout(ready_timeout) {
            Ok(url) => server.url = url.trim_end_matches('/').to_string(),
            Err(_) => {
                return Err(fail(&mut server, format!("printed no `{LISTENING}URL` line within {ready_timeout:?}")));
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        loop {
            if agent.get(format!("{}/", server.url)).call().is_ok_and(|r| r.status() == 200) {
                return Ok(server);
            }
            if started.elapsed() > ready_timeout || server.child.try_wait().ok().flatten().is_some() {
                let why = format!("did not answer GET {}/ within {ready_timeout:?}", server.url);
                return Err(fail(&mut server, why));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the Python server of this repository (`envs/servers/agentgym_server.py`) with
    /// `python` on a free loopback port; `args` are passed on (e.g. `--max-instances 8`).
    pub fn python_server(python: &Path, args: &[&str]) -> Result<Self, EnvError> {
        let mut cmd = Command::new(python);
        cmd.arg(python_server_script()).args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        Self::spawn(cmd, Duration::from_secs(60))
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server now (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python server script shipped in this repository.
///
/// ```
/// assert!(g2po_envs::agentgym::python_server_script().ends_with("servers/agentgym_server.py"));
/// ```
pub fn python_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("servers").join("agentgym_server.py")
}

/// A Python interpreter with the servers' packages: `$G2PO_ENV_PYTHON`, else the CI's
/// virtual environment `${XDG_CACHE_HOME:-$HOME/.cache}/g2po-ci/envs-venv/bin/python`
/// (made by `envs/servers/setup-venv.sh`), if it exists.
///
/// ```
/// // Either way the answer is a path or nothing; it never panics.
/// let _ = g2po_envs::agentgym::find_env_python();
/// ```
pub fn find_env_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("G2PO_ENV_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("g2po-ci").join("envs-venv").join("bin").join("python");
    p.exists().then_some(p)
}
