//! tsoracle's own Rust client (tsoracle-client 1.3.0) against pyxia.
//!
//!     tsoracle-compat calls ENDPOINT...          every call of the client, checked; prints OK
//!     tsoracle-compat load SECONDS ENDPOINT...   a mixed load; one line per answer (below)
//!
//! The load prints, on one clock (microseconds since the program started):
//!     ts FIRST COUNT SENT RECEIVED
//!     seq START COUNT SENT RECEIVED
//!     uncertain SENT RECEIVED                     (a GetSeq whose outcome is unknown)
//!     lease HOLDER_EPOCH LEASE_ID BOUND SENT RECEIVED
//!     err CALL SENT RECEIVED MESSAGE
//! and the pytest (tests/test_tsoracle_client_compat.py) checks the history.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tsoracle_client::{Client, ClientBuilder, ClientError, RetryPolicy};

fn endpoints(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a.starts_with("http://") || a.starts_with("https://") {
                a.clone()
            } else {
                format!("http://{a}")
            }
        })
        .collect()
}

async fn client(args: &[String]) -> Client {
    ClientBuilder::endpoints(endpoints(args))
        .retry_policy(RetryPolicy {
            max_attempts: 20,
            overall_deadline: Duration::from_secs(20),
            ..RetryPolicy::default()
        })
        .build()
        .await
        .expect("build the client")
}

fn code(e: &ClientError) -> Option<tonic_code::Code> {
    match e {
        ClientError::Rpc(status) => Some(tonic_code::of(status)),
        _ => None,
    }
}

/// The status code of a client error, without naming tonic (a dependency of the client).
mod tonic_code {
    #[derive(Debug, PartialEq, Eq)]
    pub enum Code {
        InvalidArgument,
        FailedPrecondition,
        NotFound,
        ResourceExhausted,
        Other(String),
    }

    pub fn of<S: std::fmt::Debug>(status: &S) -> Code {
        let s = format!("{status:?}");
        for (name, c) in [
            ("InvalidArgument", Code::InvalidArgument),
            ("FailedPrecondition", Code::FailedPrecondition),
            ("NotFound", Code::NotFound),
            ("ResourceExhausted", Code::ResourceExhausted),
        ] {
            if s.contains(&format!("code: {name}")) {
                return c;
            }
        }
        Code::Other(s)
    }
}

async fn calls(args: &[String]) {
    use tonic_code::Code;
    let c = client(args).await;

    // GetTs: one, a batch, the largest batch; strictly increasing.
    let t1 = c.get_ts().await.expect("get_ts").0;
    let batch = c.get_ts_batch(1000).await.expect("get_ts_batch(1000)");
    assert_eq!(batch.len(), 1000);
    assert!(batch[0].0 > t1, "a batch after a timestamp is above it");
    assert!(batch.windows(2).all(|w| w[1].0 == w[0].0 + 1), "a batch is consecutive");
    let big = c.get_ts_batch(262_144).await.expect("get_ts_batch(262144)");
    assert_eq!(big.len(), 262_144);
    assert!(big[0].0 > batch[999].0);
    println!("get_ts {t1} batch {} big {}", batch[0].0, big[0].0);
    let leader = c.cached_leader().expect("a leader after a grant");
    println!("leader {leader}");

    // The safe point and the frontier, from the leader.
    let ms = c.get_current_max_safe().await.expect("get_current_max_safe");
    assert!(ms.max_safe_physical_ms > 0 && ms.epoch.0 > 0, "max safe {ms:?}");
    assert!(ms.max_safe_physical_ms < (big[0].0 >> 18) + 60_000, "a safe point near the clock");
    let f = c.get_safe_frontier().await.expect("get_safe_frontier");
    assert!(f.frontier_physical_ms > ms.max_safe_physical_ms, "frontier {f:?} vs {ms:?}");
    assert_eq!(f.epoch, ms.epoch);
    println!("max_safe {} frontier {}", ms.max_safe_physical_ms, f.frontier_physical_ms);

    // Dense sequences.
    let key = format!("compat-{}", t1);
    let a = c.get_seq(&key, 10).await.expect("get_seq");
    assert_eq!((a.start, a.count), (0, 10));
    assert_eq!(a.epoch, ms.epoch.0);
    let b = c.get_seq(&key, 5).await.expect("get_seq");
    assert_eq!(b.start, 10);
    let other = format!("compat-other-{}", t1);
    let bs = c
        .get_seq_batch(&[(other.as_str(), 3), (key.as_str(), 2)])
        .await
        .expect("get_seq_batch");
    assert_eq!(bs.len(), 2);
    assert_eq!((bs[0].start, bs[0].count), (0, 3));
    assert_eq!((bs[1].start, bs[1].count), (15, 2));
    let long = "x".repeat(129);
    assert!(matches!(c.get_seq(&long, 1).await, Err(ClientError::InvalidSeqKey)));
    let e = c.get_seq(&key, 70_000).await.expect_err("over the server's cap");
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e:?}");
    assert_eq!(c.get_seq(&key, 1).await.expect("get_seq").start, 17, "nothing spent");
    println!("seq {} {} {}", a.start, b.start, bs[1].start);

    // Stamping leases.
    let holder = format!("compat-holder-{t1}");
    let ttl = Duration::from_secs(5);
    let l1 = c.acquire_lease(holder.as_bytes(), 2, ttl).await.expect("acquire");
    assert_eq!(l1.ts_upper_bound, l1.expires_at_ms, "the bound is now + ttl");
    let again = c.acquire_lease(holder.as_bytes(), 2, ttl).await.expect("re-acquire");
    assert_eq!(again.lease_id, l1.lease_id, "same holder and epoch: the same lease");
    let r = c.renew_lease(l1.lease_id).await.expect("renew");
    assert!(r.ts_upper_bound >= l1.ts_upper_bound && r.epoch == l1.epoch);
    let e = c.acquire_lease(holder.as_bytes(), 1, ttl).await.expect_err("a lower epoch");
    assert_eq!(code(&e), Some(Code::FailedPrecondition), "{e:?}");
    let l2 = c.acquire_lease(holder.as_bytes(), 3, ttl).await.expect("supersede");
    assert!(l2.lease_id > l1.lease_id);
    let e = c.renew_lease(l1.lease_id).await.expect_err("superseded");
    assert_eq!(code(&e), Some(Code::FailedPrecondition), "{e:?}");
    let e = c.renew_lease(12_345).await.expect_err("unknown");
    assert_eq!(code(&e), Some(Code::NotFound), "{e:?}");
    let e = c
        .acquire_lease(holder.as_bytes(), 9, Duration::from_secs(1))
        .await
        .expect_err("ttl below the floor");
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e:?}");
    let f2 = c.get_safe_frontier().await.expect("frontier");
    assert_eq!(f2.frontier_physical_ms, r.ts_upper_bound, "the oldest live lease holds the frontier");
    c.release_lease(l1.lease_id).await.expect("release");
    c.release_lease(l2.lease_id).await.expect("release");
    c.release_lease(l2.lease_id).await.expect("release again");
    println!("lease {} {} {}", l1.lease_id, r.ts_upper_bound, l2.lease_id);
    println!("OK");
}

struct Out {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Out {
    fn us(&self) -> u128 {
        self.start.elapsed().as_micros()
    }

    async fn push(&self, line: String) {
        self.lines.lock().await.push(line);
    }
}

async fn load(seconds: u64, args: &[String]) {
    let c = Arc::new(client(args).await);
    let out = Arc::new(Out { start: Instant::now(), lines: Mutex::new(Vec::new()) });
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let (c, out) = (c.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let n = 1 + (i % 3) * 7;
                let sent = out.us();
                let r = c.get_ts_batch(n).await;
                let got = out.us();
                match r {
                    Ok(v) => out.push(format!("ts {} {} {sent} {got}", v[0].0, v.len())).await,
                    Err(e) => {
                        out.push(format!("err get_ts {sent} {got} {e}")).await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    for i in 0..2u32 {
        let (c, out) = (c.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let sent = out.us();
                let r = c.get_seq("compat-load", 1 + i * 3).await;
                let got = out.us();
                match r {
                    Ok(b) => out.push(format!("seq {} {} {sent} {got}", b.start, b.count)).await,
                    Err(ClientError::SeqUncertain) => {
                        out.push(format!("uncertain {sent} {got}")).await
                    }
                    Err(e) => {
                        out.push(format!("err get_seq {sent} {got} {e}")).await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    {
        let (c, out) = (c.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut epoch = 1u64;
            while Instant::now() < until {
                let sent = out.us();
                let r = c.acquire_lease(b"compat-load", epoch, Duration::from_secs(5)).await;
                let got = out.us();
                match r {
                    Ok(l) => {
                        out.push(format!(
                            "lease {epoch} {} {} {sent} {got}",
                            l.lease_id, l.ts_upper_bound
                        ))
                        .await;
                        epoch += 1;
                    }
                    Err(e) => out.push(format!("err acquire_lease {sent} {got} {e}")).await,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a load task");
    }
    for line in out.lines.lock().await.iter() {
        println!("{line}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("calls") if args.len() > 1 => calls(&args[1..]).await,
        Some("load") if args.len() > 2 => {
            let seconds: u64 = args[1].parse().expect("seconds");
            load(seconds, &args[2..]).await
        }
        _ => {
            eprintln!("usage: tsoracle-compat calls ENDPOINT... | load SECONDS ENDPOINT...");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
