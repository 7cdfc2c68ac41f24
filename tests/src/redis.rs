//! A real `redis-server` on loopback for one test: its own port on 127.0.0.1, no
//! persistence, stopped by PID when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::PortStart;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers. Panics
    /// when `redis-server` is missing: the test suite provisions it. A port another
    /// test's daemon took between the check that it was free and redis-server's bind
    /// is given up for another one, up to three times.
    pub fn start() -> Redis {
        crate::start_on_a_free_port("redis-server", |port| {
            let mut redis = Redis { child: None, port };
            redis.start_on_port().map(|()| redis)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/DB`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again on the same port (after [`Redis::stop`]); its data is
    /// gone. Does nothing when it runs.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            return;
        }
        match self.start_on_port() {
            Ok(()) => {}
            Err(PortStart::Taken(e) | PortStart::Failed(e)) => {
                panic!(
                    "redis-server did not start again on port {}: {e}",
                    self.port
                )
            }
        }
    }

    /// Starts redis-server on `self.port` and waits until it answers as itself: the
    /// server on the port must name our child's PID (not another test's daemon that
    /// took the port, while ours exits with "Address already in use").
    fn start_on_port(&mut self) -> Result<(), PortStart> {
        let mut child = Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test provisions it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // it exits at once when its port is taken
                return Err(PortStart::Taken(format!("redis-server {status}")));
            }
            if answers_as(self.port, child.id()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(
                    format!("redis-server: no answer on port {} within 10 s", self.port).into(),
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the Redis server on 127.0.0.1:`port` is the process `pid` (`INFO server`
/// says `process_id:PID`).
fn answers_as(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut con) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
    if con
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .is_err()
    {
        return false;
    }
    let want = format!("process_id:{pid}\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // the reply is one bulk string: `$LEN\r\n`, then LEN bytes and `\r\n`
    while got.len() < 64 * 1024 {
        match con.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let Some(end) = got.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let Some(len) = std::str::from_utf8(&got[..end])
            .ok()
            .and_then(|h| h.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        if got.len() >= end + 2 + len {
            let body = &got[end + 2..end + 2 + len];
            return body.windows(want.len()).any(|w| w == want.as_bytes());
        }
    }
    false
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server on a port is told apart from another process there.
    #[test]
    fn a_server_answers_as_its_own_process_only() {
        let redis = Redis::start();
        let pid = redis.pid().expect("it runs");
        assert!(answers_as(redis.port(), pid));
        assert!(!answers_as(redis.port(), pid + 1));
        let free = crate::free_port().unwrap();
        assert!(!answers_as(free, pid));
    }
}
