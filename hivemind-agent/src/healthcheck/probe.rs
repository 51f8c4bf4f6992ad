//! Running one health check.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    model::Probe,
    runtime::{Runtime, exec::ExecOutcome},
};

/// How a check went: `Ok` passes; `Err` says why not, for `container-info`.
pub type ProbeResult = Result<(), String>;

/// Longest failure detail kept.
const DETAIL_LIMIT: usize = 512;

pub async fn run(
    runtime: &Runtime,
    probe: &Probe,
    id: &str,
    ip: Option<Ipv4Addr>,
    timeout: Duration,
    scratch: &Path,
) -> ProbeResult {
    match probe {
        Probe::Cmd { command } => {
            let args = ["sh", "-c", command.as_str()].map(str::to_owned);
            exec(runtime, &args, id, timeout, scratch).await
        }
        Probe::Exec { args } => exec(runtime, args, id, timeout, scratch).await,
        Probe::Http { port, path } => {
            let ip = ip.ok_or("the container has no address")?;
            http(ip, *port, path, timeout).await
        }
        Probe::Tcp { port } => {
            let ip = ip.ok_or("the container has no address")?;
            tokio::time::timeout(timeout, TcpStream::connect((ip, *port)))
                .await
                .map_err(|_| format!("no connection to port {port} within {timeout:?}"))?
                .map(drop)
                .map_err(|err| format!("port {port}: {err}"))
        }
    }
}

async fn exec(
    runtime: &Runtime,
    args: &[String],
    id: &str,
    timeout: Duration,
    scratch: &Path,
) -> ProbeResult {
    let output = scratch.join("health.out");
    let _ = std::fs::remove_file(&output);
    let exec_id = format!("health-{}", fastrand::u32(..));
    let outcome = runtime
        .exec(id, &exec_id, args, timeout, &output)
        .await
        .map_err(|err| err.to_string())?;
    let said = std::fs::read_to_string(&output).unwrap_or_default();
    match outcome {
        ExecOutcome::Exited(0) => Ok(()),
        ExecOutcome::Exited(code) => Err(truncate(&format!("exit code {code}: {}", said.trim()))),
        ExecOutcome::TimedOut => Err(format!("no answer within {timeout:?}")),
    }
}

/// A minimal HTTP/1.0 GET: the status line decides (2xx and 3xx pass).
async fn http(ip: Ipv4Addr, port: u16, path: &str, timeout: Duration) -> ProbeResult {
    let exchange = async {
        let mut stream = TcpStream::connect((ip, port))
            .await
            .map_err(|err| format!("port {port}: {err}"))?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: hivemind-health\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("sending the request: {err}"))?;
        let mut head = vec![0; 1024];
        let mut read = 0;
        while read < head.len() {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|err| format!("reading the response: {err}"))?;
            if n == 0 || head[..read + n].contains(&b'\n') {
                read += n;
                break;
            }
            read += n;
        }
        let line = String::from_utf8_lossy(&head[..read]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                truncate(&format!(
                    "not an HTTP response: {}",
                    line.lines().next().unwrap_or("")
                ))
            })?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {path} on port {port}: no answer within {timeout:?}"))?
}

fn truncate(text: &str) -> String {
    if text.len() <= DETAIL_LIMIT {
        return text.to_owned();
    }
    let mut end = DETAIL_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
