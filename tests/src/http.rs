//! A real HTTP server for the HTTP destination's tests (hyper, on a free port): it stores the
//! NDJSON lines of every request it accepts and answers as the test tells it, so a test can
//! make it fail for a while (5xx), refuse some records for good (413), or stop answering.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How the server answers the next requests.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer this many requests with 503 first (then go on as below).
    pub fail_next: usize,
    /// Answer 413 to any request whose body contains this text.
    pub refuse_containing: Option<String>,
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    accepted: Vec<String>,
    requests: usize,
    headers: Vec<(String, String)>,
}

/// The server; it stops when dropped (its task is aborted).
pub struct HttpSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpSink {
    /// Starts a server on 127.0.0.1 and a free port.
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(HttpSink { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    /// Every line of every accepted request, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Requests answered so far (accepted or not).
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// From now on, answer the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().unwrap().behaviour.fail_next = n;
    }

    /// 503s still to give.
    pub fn failing(&self) -> usize {
        self.state.lock().unwrap().behaviour.fail_next
    }

    /// The headers of the last request.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().headers.clone()
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    let mut state = state.lock().unwrap();
    state.requests += 1;
    state.headers = headers;
    if state.behaviour.fail_next > 0 {
        state.behaviour.fail_next -= 1;
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE, "try again"));
    }
    if let Some(text) = &state.behaviour.refuse_containing
        && body.contains(text.as_str())
    {
        return Ok(status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "record too large for us",
        ));
    }
    state.accepted.extend(body.lines().map(str::to_owned));
    Ok(status(StatusCode::OK, "ok"))
}

fn status(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}
