//! netbench: the TCP load the SVM harness puts on its networks (L1, its network namespaces and
//! the L2 guests). Standard library only, built by ci/svm/assets.sh with
//!     rustc -O -C target-feature=+crt-static
//! so that the one static binary runs in L1 and in L2's busybox initramfs alike.
//!
//!   netbench serve PORT [MAX]   accept on 0.0.0.0:PORT (MAX connections, then exit; default
//!                               forever); prints `netbench: peer ADDR` for each connection.
//!                               A connection's first byte picks its mode: `E` echo (the rtt
//!                               client), `S` sink (the send client). One that closes without
//!                               a byte is a knock: it only shows that the server is reachable.
//!   netbench send HOST PORT SECS  streams to a sink for SECS seconds, then half-closes and
//!                               waits for the server's count of what it received, so that the
//!                               time covers delivery, not only the local socket buffer.
//!                               Prints `netbench: send BYTES bytes SECS s MB/s` (10^6 bytes).
//!   netbench rtt HOST PORT N    N 1-byte ping-pongs (TCP_NODELAY) after a few warm-up ones;
//!                               prints `netbench: rtt n N median US us p90 US us min US us`.
//!   netbench knock HOST PORT    connects and closes (exit status 0 if the connection was made).
//!
//! HOST is an IP address (no name resolution: a static glibc binary has no NSS). A read or
//! write that blocks for 20 s is an error, so a stalled network fails instead of hanging.
//! Exit status 0 on success, 1 on an I/O error (printed), 2 on bad usage.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: netbench serve PORT [MAX] | send HOST PORT SECS | rtt HOST PORT N | knock HOST PORT";
const WARMUP: usize = 10;
const CHUNK: usize = 128 * 1024;
/// How long any one read or write may block: far longer than any pause of a working network
/// (even under TCG), so that a stalled one gives an error instead of a hang.
const STALL: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", port] => parse(port).and_then(|p| serve(p, None)),
        ["serve", port, max] => parse(port).and_then(|p| serve(p, Some(parse(max)?))),
        ["send", host, port, secs] => {
            addr(host, port).and_then(|a| send(a, Duration::from_secs(parse(secs)?)))
        }
        ["rtt", host, port, n] => addr(host, port).and_then(|a| rtt(a, parse(n)?)),
        ["knock", host, port] => addr(host, port).and_then(|a| connect(a).map(drop)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbench: {e}");
            ExitCode::from(1)
        }
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn parse<T: std::str::FromStr>(text: &str) -> io::Result<T> {
    text.parse().map_err(|_| bad(format!("{text:?} is not a valid number")))
}

fn addr(host: &str, port: &str) -> io::Result<SocketAddr> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| bad(format!("{host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, parse(port)?))
}

/// A connection whose every step is bounded by STALL (errors name the step that stalled).
fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, STALL)?;
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    Ok(stream)
}

fn serve(port: u16, max: Option<u64>) -> io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
    println!("netbench: listening on port {port}");
    let mut workers = Vec::new();
    let mut accepted = 0u64;
    while max.map_or(true, |m| accepted < m) {
        let (stream, peer) = listener.accept()?;
        accepted += 1;
        // One line per peer, flushed at once: the tests read the peer's address from it.
        println!("netbench: peer {}", peer.ip());
        workers.push(thread::spawn(move || {
            if let Err(e) = handle(stream) {
                eprintln!("netbench: peer {peer}: {e}");
            }
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn handle(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    let mut first = [0u8; 1];
    if stream.read(&mut first)? == 0 {
        println!("netbench: knock");
        return Ok(());
    }
    match first[0] {
        b'E' => {
            stream.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n])?;
            }
        }
        b'S' => {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stream.write_all(&total.to_le_bytes())?;
            println!("netbench: sink received {total} bytes");
            Ok(())
        }
        other => Err(bad(format!("unknown mode byte {other:#04x}"))),
    }
}

fn send(to: SocketAddr, secs: Duration) -> io::Result<()> {
    let mut stream = connect(to)?;
    stream.write_all(b"S")?;
    // Not all zeroes, in case anything on the way compresses or skips zero pages.
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + i / 251) as u8).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < secs {
        stream
            .write_all(&buf)
            .map_err(|e| io::Error::new(e.kind(), format!("write after {sent} bytes: {e}")))?;
        sent += buf.len() as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).map_err(|e| {
        io::Error::new(e.kind(), format!("waiting for the count of {sent} bytes: {e}"))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    if received != sent {
        return Err(io::Error::other(format!(
            "sent {sent} bytes, the server received {received}"
        )));
    }
    println!(
        "netbench: send {sent} bytes {elapsed:.2} s {:.2} MB/s",
        sent as f64 / elapsed / 1e6
    );
    Ok(())
}

fn rtt(to: SocketAddr, n: usize) -> io::Result<()> {
    if n == 0 {
        return Err(bad("rtt needs at least one sample".into()));
    }
    let mut stream = connect(to)?;
    stream.set_nodelay(true)?;
    stream.write_all(b"E")?;
    let mut samples = Vec::with_capacity(n);
    let mut byte = [0u8; 1];
    for i in 0..WARMUP + n {
        let start = Instant::now();
        stream.write_all(b"x")?;
        stream
            .read_exact(&mut byte)
            .map_err(|e| io::Error::new(e.kind(), format!("round trip {i}: {e}")))?;
        if i >= WARMUP {
            samples.push(start.elapsed().as_micros());
        }
    }
    samples.sort_unstable();
    let pick = |q: usize| samples[((n - 1) * q / 100).min(n - 1)];
    println!(
        "netbench: rtt n {n} median {} us p90 {} us min {} us",
        pick(50),
        pick(90),
        samples[0]
    );
    Ok(())
}
