//! `pyxia._native.TsoWindow`: the timestamp oracle's allocator ([`crate::tso::Window`]) shared
//! by Python and a native gRPC server (tonic, on its own tokio runtime) that serves
//! `tsoracle.v1.TsoService/GetTs` on a TSO port.
//!
//! Division of labour: Python owns leadership, the fence, the high-water writes and the time
//! lease; it drives the allocator through this object (become_leader, step_down, prepare,
//! commit) and publishes the fast-path deadline. The native server answers a GetTs itself only
//! when the allocator grants at once before that deadline; every other call (not serving,
//! window exhausted, lease to renew, a malformed request) is handed to Python's `fallback(raw,
//! responder)` — called from a runtime thread with the interpreter attached; it must only
//! schedule the work (e.g. `loop.call_soon_threadsafe`) and answer later with
//! `responder.send(code, message, payload, trailers)`. A call Python never answers ends
//! UNAVAILABLE after [`FALLBACK_TIMEOUT`]. Other methods of the service answer UNIMPLEMENTED.
//!
//! Every allocator method takes the window's mutex: a step-down from Python returns only once
//! no native grant is in progress, and none is made after it.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, MetadataMap, MetadataValue,
};
use tonic::server::{Grpc, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};

use crate::tso::{decode_get_ts_request, encode_get_ts_response, Refusal, Window};

const GET_TS_PATH: &str = "/tsoracle.v1.TsoService/GetTs";
const DETAILS_KEY: &str = "grpc-status-details-bin";
/// How long a call handed to Python waits for its answer.
pub const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for open calls before it drops the runtime.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in seconds: the clock of Python's `time.monotonic()`.
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

// -- the codec: messages stay bytes (the handler decodes GetTsRequest itself) -------------------

#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

// -- the service -------------------------------------------------------------------------------

type Reply = Result<tonic::Response<Bytes>, Status>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone)]
struct TsoService {
    window: Arc<Window>,
    fallback: Arc<Py<PyAny>>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for TsoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() == GET_TS_PATH {
                let mut grpc = Grpc::new(RawCodec);
                Ok(grpc.unary(svc, req).await)
            } else {
                let msg = format!("{} is not served on the TSO port", req.uri().path());
                Ok(Status::unimplemented(msg).into_http())
            }
        })
    }
}

impl UnaryService<Bytes> for TsoService {
    type Response = Bytes;
    type Future = BoxFuture<Reply>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let raw = request.into_inner();
        match decode_get_ts_request(&raw) {
            Some(count) => {
                let now = (now_ms(), monotonic_s());
                if let Some(g) = self.window.fast_grant(count as i64, now.0, now.1) {
                    let out = Bytes::from(encode_get_ts_response(&g));
                    return Box::pin(std::future::ready(Ok(tonic::Response::new(out))));
                }
            }
            None => self.window.state.lock().handed_to_python += 1,
        }
        let fallback = self.fallback.clone();
        Box::pin(ask_python(fallback, raw))
    }
}

async fn ask_python(fallback: Arc<Py<PyAny>>, raw: Bytes) -> Reply {
    let (tx, rx) = oneshot::channel();
    // Attaching may wait for the interpreter: on a blocking thread, so that the runtime's
    // workers go on answering natively meanwhile.
    let handed = tokio::task::spawn_blocking(move || {
        Python::attach(|py| -> PyResult<()> {
            let responder = TsoResponder {
                tx: Mutex::new(Some(tx)),
            };
            fallback.call1(py, (PyBytes::new(py, &raw), Py::new(py, responder)?))?;
            Ok(())
        })
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = handed {
        return Err(Status::unavailable(format!(
            "tso: the oracle is not running: {e}"
        )));
    }
    match tokio::time::timeout(FALLBACK_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(Status::unavailable("tso: the oracle dropped the call")),
        Err(_) => Err(Status::unavailable("tso: timed out waiting for the oracle")),
    }
}

/// Python's answer to one handed-over call (sent once; later sends are ignored).
#[pyclass(name = "TsoResponder", frozen)]
pub struct TsoResponder {
    tx: Mutex<Option<oneshot::Sender<Reply>>>,
}

#[pymethods]
impl TsoResponder {
    /// Answers the call: `code` 0 with the response `payload`, else a gRPC status `code` with
    /// `message` and `trailers` (`grpc-status-details-bin` becomes the status details).
    /// False if it was answered already or the caller is gone.
    fn send(
        &self,
        code: i32,
        message: String,
        payload: PyBackedBytes,
        trailers: Vec<(String, PyBackedBytes)>,
    ) -> bool {
        let Some(tx) = self.tx.lock().take() else {
            return false;
        };
        let reply = if code == 0 {
            Ok(tonic::Response::new(Bytes::copy_from_slice(&payload)))
        } else {
            Err(error_status(code, message, &trailers))
        };
        tx.send(reply).is_ok()
    }
}

fn error_status(code: i32, message: String, trailers: &[(String, PyBackedBytes)]) -> Status {
    let mut md = MetadataMap::new();
    let mut details = Bytes::new();
    for (key, value) in trailers {
        if key == DETAILS_KEY {
            details = Bytes::copy_from_slice(value);
        } else if key.ends_with("-bin") {
            if let Ok(k) = BinaryMetadataKey::from_bytes(key.as_bytes()) {
                md.append_bin(k, MetadataValue::from_bytes(value));
            }
        } else if let (Ok(k), Ok(v)) = (
            AsciiMetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(&value[..]),
        ) {
            md.append(k, v);
        }
    }
    Status::with_details_and_metadata(Code::from(code), message, details, md)
}

// -- the server --------------------------------------------------------------------------------

struct ServerHandle {
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    port: u16,
}

fn start_server(
    window: Arc<Window>,
    fallback: Py<PyAny>,
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("pyxia-tso")
        .enable_all()
        .build()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = TsoService {
        window,
        fallback: Arc::new(fallback),
    };
    let done = runtime.spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(svc, incoming, async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(ServerHandle {
        runtime,
        stop,
        done,
        port,
    })
}

impl ServerHandle {
    fn shutdown(self) {
        let _ = self.stop.send(());
        let ServerHandle { runtime, done, .. } = self;
        let _ = runtime.block_on(async { tokio::time::timeout(STOP_GRACE, done).await });
        runtime.shutdown_timeout(Duration::from_millis(500));
    }
}

// -- the Python object -------------------------------------------------------------------------

fn refusal_code(r: Result<(), Refusal>) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// The allocator shared with the native GetTs server (see the module docs).
#[pyclass(name = "TsoWindow", frozen)]
pub struct PyTsoWindow {
    window: Arc<Window>,
    server: Mutex<Option<ServerHandle>>,
}

#[pymethods]
impl PyTsoWindow {
    #[new]
    fn new() -> Self {
        PyTsoWindow {
            window: Arc::new(Window::default()),
            server: Mutex::new(None),
        }
    }

    /// Serving at `epoch` from `floor_ms` up to `high_water_ms`; the fast path stays closed
    /// until `set_fast_until`.
    fn become_leader(&self, floor_ms: i64, high_water_ms: i64, epoch: i64) {
        let mut st = self.window.state.lock();
        st.allocator.become_leader(floor_ms, high_water_ms, epoch);
        st.fast_until = Some(0.0);
    }

    fn step_down(&self) {
        let mut st = self.window.state.lock();
        st.allocator.step_down();
        st.fast_until = Some(0.0);
    }

    #[getter]
    fn epoch(&self) -> Option<i64> {
        self.window.state.lock().allocator.epoch()
    }

    #[getter]
    fn high_water(&self) -> Option<i64> {
        self.window.state.lock().allocator.high_water()
    }

    fn would_grant(&self, count: i64, now_ms: i64) -> bool {
        self.window
            .state
            .lock()
            .allocator
            .would_grant(count, now_ms)
    }

    /// `(code, physical_ms, logical_start, epoch)`; code 0 is a grant, else a refusal
    /// (1 not leader, 2 window exhausted, 3 invalid count, 4 out of range).
    fn try_grant(&self, count: i64, now_ms: i64) -> (u8, i64, i64, i64) {
        match self.window.state.lock().allocator.try_grant(count, now_ms) {
            Ok(g) => (0, g.physical_ms, g.logical_start, g.epoch),
            Err(e) => (e.code(), 0, 0, 0),
        }
    }

    /// `(code, epoch, requested)`.
    fn prepare_extension(&self, now_ms: i64, ahead_ms: i64) -> (u8, i64, i64) {
        match self
            .window
            .state
            .lock()
            .allocator
            .prepare_extension(now_ms, ahead_ms)
        {
            Ok((epoch, requested)) => (0, epoch, requested),
            Err(e) => (e.code(), 0, 0),
        }
    }

    /// `(code, epoch, requested)`.
    fn prepare_renewal(
        &self,
        now_ms: i64,
        min_ahead_ms: i64,
        window_ahead_ms: i64,
    ) -> (u8, i64, i64) {
        let st = self.window.state.lock();
        match st
            .allocator
            .prepare_renewal(now_ms, min_ahead_ms, window_ahead_ms)
        {
            Ok((epoch, requested)) => (0, epoch, requested),
            Err(e) => (e.code(), 0, 0),
        }
    }

    /// `(code, applied)`.
    fn commit(&self, epoch: i64, durable_ms: i64) -> (u8, bool) {
        match self.window.state.lock().allocator.commit(epoch, durable_ms) {
            Ok(applied) => (0, applied),
            Err(e) => (refusal_code(Err(e)), false),
        }
    }

    /// The native server grants while `time.monotonic() < until`; None: no time limit.
    fn set_fast_until(&self, until: Option<f64>) {
        self.window.state.lock().fast_until = until;
    }

    /// `(native grants, their timestamps, calls handed to Python)`.
    fn stats(&self) -> (u64, u64, u64) {
        let st = self.window.state.lock();
        (st.fast_grants, st.fast_timestamps, st.handed_to_python)
    }

    /// Starts the native GetTs server on `host:port` (0: any free port) with `workers` runtime
    /// threads; returns the bound port. Raises ValueError for a bad address, OSError if it
    /// cannot listen, RuntimeError if it already serves.
    fn serve(&self, host: &str, port: u16, fallback: Py<PyAny>, workers: usize) -> PyResult<u16> {
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {host:?}")))?;
        if !(1..=64).contains(&workers) {
            return Err(PyValueError::new_err("workers must be between 1 and 64"));
        }
        let mut server = self.server.lock();
        if server.is_some() {
            return Err(PyRuntimeError::new_err("the TSO server is already running"));
        }
        let handle = start_server(
            self.window.clone(),
            fallback,
            SocketAddr::new(ip, port),
            workers,
        )?;
        let port = handle.port;
        *server = Some(handle);
        Ok(port)
    }

    /// Stops the server (waits up to 2 s for open calls). Safe to call twice.
    fn stop(&self, py: Python<'_>) {
        let handle = self.server.lock().take();
        if let Some(h) = handle {
            py.detach(|| h.shutdown());
        }
    }

    #[getter]
    fn port(&self) -> Option<u16> {
        self.server.lock().as_ref().map(|h| h.port)
    }
}
