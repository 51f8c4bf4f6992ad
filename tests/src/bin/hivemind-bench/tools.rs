//! Traffic tools the benches start inside namespaces (pinned with taskset): netperf's
//! `TCP_RR` in miniature, and a UDP flood. Plain std, blocking sockets.
//!
//! - `rr-server --port P`: accepts connections one after another and answers every byte it
//!   reads with one byte.
//! - `rr-client --addr IP:P --secs S`: one connection with `TCP_NODELAY`; sends one byte,
//!   waits for the answer, again, for S seconds after a short warm-up; prints transactions
//!   per second.
//! - `udp-flood --addr IP:P --secs S [--size N]`: sends N-byte UDP datagrams (default 18: a
//!   64-byte Ethernet frame) as fast as one thread can for S seconds; prints
//!   `<packets sent> <seconds> <CPU seconds of the sending thread>`. The thread's CPU time
//!   (the scheduler's precise runtime) includes the softirq work the kernel does in its
//!   context when `send` re-enables bottom halves — the receiving side of a veth hop, TC
//!   programs, IP input, netfilter — and excludes whatever else runs on the CPU meanwhile.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

const TOOLS: &[&str] = &["rr-server", "rr-client", "udp-flood"];
/// Transactions before the clock starts (connection set-up, caches, CPU frequency).
const WARM_UP: Duration = Duration::from_millis(300);

pub fn is_tool(name: &str) -> bool {
    TOOLS.contains(&name)
}

pub fn main(tool: &str, args: &[String]) -> ExitCode {
    let result = match tool {
        "rr-server" => flag(args, "--port")
            .and_then(|p| p.parse::<u16>().map_err(|e| format!("--port: {e}")))
            .and_then(rr_server),
        "rr-client" => addr_and_secs(args).and_then(|(addr, secs)| rr_client(addr, secs)),
        "udp-flood" => addr_and_secs(args).and_then(|(addr, secs)| {
            let size = flag(args, "--size").ok().map_or(Ok(18), |s| {
                s.parse::<usize>().map_err(|e| format!("--size: {e}"))
            })?;
            udp_flood(addr, secs, size)
        }),
        _ => Err(format!("unknown tool {tool}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{tool}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| format!("missing {name}"))
}

fn addr_and_secs(args: &[String]) -> Result<(SocketAddr, f64), String> {
    let addr = flag(args, "--addr")?
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let secs = flag(args, "--secs")?
        .parse::<f64>()
        .map_err(|e| format!("--secs: {e}"))?;
    Ok((addr, secs))
}

fn rr_server(port: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind: {e}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let mut byte = [0u8; 1];
        while matches!(stream.read(&mut byte), Ok(1)) {
            if stream.write_all(&byte).is_err() {
                break;
            }
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    // The server may still be starting.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => return Err(format!("connect {addr}: {err}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn rr_client(addr: SocketAddr, secs: f64) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let mut byte = [7u8; 1];
    let mut transact = |stream: &mut TcpStream| -> Result<(), String> {
        stream.write_all(&byte).map_err(|e| format!("write: {e}"))?;
        stream
            .read_exact(&mut byte)
            .map_err(|e| format!("read: {e}"))
    };
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        transact(&mut stream)?;
    }
    let duration = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut count: u64 = 0;
    loop {
        for _ in 0..64 {
            transact(&mut stream)?;
        }
        count += 64;
        if start.elapsed() >= duration {
            break;
        }
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let rate = count as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.1}");
    Ok(())
}

fn udp_flood(addr: SocketAddr, secs: f64, size: usize) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket.connect(addr).map_err(|e| format!("connect: {e}"))?;
    let payload = vec![0x5au8; size];
    let duration = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        for _ in 0..64 {
            // Errors (an ICMP error reported back, a full queue) only mean that packet is
            // not counted.
            if socket.send(&payload).is_ok() {
                sent += 1;
            }
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("{sent} {elapsed:.6} {:.6}", thread_cpu_secs()?);
    Ok(())
}

/// CPU time of the calling thread so far.
fn thread_cpu_secs() -> Result<f64, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return Err(format!(
            "clock_gettime: {}",
            std::io::Error::last_os_error()
        ));
    }
    #[allow(clippy::cast_precision_loss)] // seconds and nanoseconds of a short run
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}
