//! GetTs load: CALLERS concurrent callers, each waiting for its answer before the next call
//! (closed loop), sharing CONNS HTTP/2 connections, for SECONDS; prints one JSON line:
//!     {"calls":N,"errors":N,"seconds":S,"calls_per_s":R,"p50_ms":X,"p99_ms":Y}
//!
//!     getts-load ADDRESS CALLERS CONNS SECONDS [COUNT]
//!
//! Every connection makes one call before the clock starts (warm-up); a failed warm-up call
//! exits 1 with the error on stderr.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tsoracle_proto::v1::GetTsRequest;
use tsoracle_proto::v1::tso_service_client::TsoServiceClient;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> Option<T> {
    match args.get(i) {
        Some(s) => s.parse().ok(),
        None => default,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(callers), Some(conns), Some(seconds), Some(count)) = (
        args.get(1).cloned(),
        arg::<usize>(&args, 2, None),
        arg::<usize>(&args, 3, None),
        arg::<f64>(&args, 4, None),
        arg::<u32>(&args, 5, Some(1)),
    ) else {
        eprintln!("usage: getts-load ADDRESS CALLERS CONNS SECONDS [COUNT]");
        return ExitCode::from(2);
    };
    let uri = if addr.contains("://") { addr } else { format!("http://{addr}") };
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..conns.max(1) {
        let endpoint = match Endpoint::from_shared(uri.clone()) {
            Ok(e) => e.tcp_nodelay(true),
            Err(e) => {
                eprintln!("getts-load: bad address: {e}");
                return ExitCode::from(2);
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("getts-load: connect: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = TsoServiceClient::new(channel.clone())
            .get_ts(GetTsRequest { count })
            .await
        {
            eprintln!("getts-load: warm-up call failed: {e}");
            return ExitCode::from(1);
        }
        channels.push(channel);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = TsoServiceClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<Duration> = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match client.get_ts(GetTsRequest { count }).await {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    let mut errors = 0usize;
    for t in tasks {
        let (lat, e) = t.await.expect("a caller panicked");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    let (p50, p99) = if all.is_empty() {
        (0.0, 0.0)
    } else {
        (ms(all[all.len() / 2]), ms(all[all.len() * 99 / 100]))
    };
    println!(
        "{{\"calls\":{},\"errors\":{},\"seconds\":{:.3},\"calls_per_s\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        errors,
        elapsed,
        all.len() as f64 / elapsed,
        p50,
        p99
    );
    ExitCode::SUCCESS
}
