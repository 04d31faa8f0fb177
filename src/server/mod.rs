//! `glm-flash serve`: an OpenAI-compatible HTTP server.
//!
//! axum on tokio takes the requests; the model lives on one engine thread ([`worker`])
//! that the requests share through a FIFO queue. A handler checks and renders its request
//! ([`openai`]), queues it, and turns what the engine streams back into the OpenAI reply
//! (one JSON object, or server-sent events). A new endpoint is a route in [`router`] and a
//! handler beside the others.

mod logprobs;
mod openai;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::BackendOptions;
use crate::error::{Error, Result};
use crate::sampler::SamplerOptions;
use openai::ApiError;
use worker::{Engine, EngineInfo};

/// How long replies still streaming may go on once the server is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Largest request body accepted (a long conversation is a few MB of JSON at most).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// What `glm-flash serve` was asked for.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// GGUF file; `None` runs the small built-in model.
    pub model: Option<PathBuf>,
    pub backend: BackendOptions,
    pub host: String,
    /// 0 picks a free port ([`Server::addr`] tells which).
    pub port: u16,
    /// When set, `/v1/*` requests need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Origins whose web pages may call the server from a browser (CORS); `*` for any.
    /// Empty: none (browsers keep other sites' pages from reading the replies).
    pub cors_origins: Vec<String>,
    /// Sequence slots: conversations whose cached prefix is kept (see README).
    pub parallel: usize,
    /// Used where a request does not say.
    pub defaults: Defaults,
    /// A progress bar on stderr while weights go to a GPU.
    pub show_progress: bool,
}

/// Generation settings a request may override.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub max_tokens: usize,
    /// The seed is used only when `fixed_seed` is set; otherwise each request without a
    /// seed gets one from the clock.
    pub sampler: SamplerOptions,
    pub fixed_seed: bool,
    pub thinking: bool,
}

/// A running server: HTTP on its own tokio runtime, the model on the engine thread.
pub struct Server {
    addr: SocketAddr,
    info: EngineInfo,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the model, binds the address and starts serving; returns once requests are
    /// accepted.
    pub fn start(opts: ServeOptions) -> Result<Server> {
        if opts.parallel == 0 {
            return Err(Error::Input("--parallel must be at least 1".into()));
        }
        let cors = cors_layer(&opts.cors_origins)?;
        let engine = Engine::start(&opts)?;
        let info = engine.info().clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("glm-flash http")
            .build()
            .map_err(|e| Error::Input(format!("cannot start the HTTP runtime: {e}")))?;
        let bind = format!("{}:{}", opts.host, opts.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&bind))
            .map_err(|e| Error::io(&bind, e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(&bind, e))?;
        let app = router(
            Arc::new(App {
                engine,
                api_key: opts.api_key.clone(),
                defaults: opts.defaults.clone(),
                created: openai::unix_time(),
            }),
            cors,
        );
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("glm-flash http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut graceful = stop.clone();
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|&stop| stop).await;
                    });
                    // Replies still streaming get a few seconds, then their connections are
                    // dropped (which cancels their generations).
                    let mut grace = stop;
                    let deadline = async move {
                        let _ = grace.wait_for(|&stop| stop).await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    };
                    tokio::select! {
                        result = served => {
                            if let Err(e) = result {
                                log::error!("the HTTP server stopped: {e}");
                            }
                        }
                        () = deadline => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| Error::Input(format!("cannot start the HTTP thread: {e}")))?;
        Ok(Server {
            addr,
            info,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One line on what is served: model, backend, slots and context.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let slots = if i.slots == 1 { "slot" } else { "slots" };
        format!(
            "{} on {}, {} sequence {slots} of {} tokens",
            i.model_name, i.backend, i.slots, i.context
        )
    }

    /// The line `auto` printed when it fell back to the CPU, if it did.
    pub fn fallback(&self) -> Option<&str> {
        self.info.fallback.as_deref()
    }

    /// Stops accepting requests; replies in flight get a few seconds to finish, then their
    /// connections are dropped.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What every handler shares.
struct App {
    engine: Engine,
    api_key: Option<String>,
    defaults: Defaults,
    /// Unix time the server started (the model's `created`).
    created: u64,
}

fn router(app: Arc<App>, cors: Option<CorsLayer>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), authorize));
    let app_router = Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Outermost, so that preflights are answered before routing and authorisation (a
    // browser sends no key with them) and every reply, errors too, carries the headers.
    match cors {
        Some(cors) => app_router.layer(cors),
        None => app_router,
    }
    .with_state(app)
}

/// The CORS layer for `origins` (`*`: any), or None when no origin is allowed.
fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .map(|o| origin_header(o))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(3600)),
    ))
}

/// An origin as a browser sends it: scheme, host and optional port, no path.
fn origin_header(origin: &str) -> Result<HeaderValue> {
    let bad = || {
        Error::Input(format!(
            "--cors-origin {origin:?}: expected an origin such as http://localhost:3000 \
             (scheme, host and port, no path) or *"
        ))
    };
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(bad)?;
    if host.is_empty() || host.contains(['/', '?', '#']) || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    HeaderValue::from_str(origin).map_err(|_| bad())
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), key.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized("invalid API key").into_response(),
        None => ApiError::unauthorized(
            "missing API key: send it as the header `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let s = app.engine.stats();
    Json(json!({
        "status": "ok",
        "slots": app.engine.info().slots,
        "requests": {
            "queued": s.queued,
            "served": s.served,
            "cancelled": s.cancelled,
            "failed": s.failed,
        },
    }))
    .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let info = app.engine.info();
    Json(json!({
        "object": "list",
        "data": [{
            "id": info.model_name,
            "object": "model",
            "created": app.created,
            "owned_by": "glm-flash",
            "context_length": info.context,
        }],
    }))
    .into_response()
}

async fn not_found(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; the server has GET /health, GET /v1/models, POST /v1/chat/completions and POST /v1/completions",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

/// The request body, or the error for one that could not be read (413 when too large).
fn body_bytes(
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
        .with_code("request_too_large"),
        status => ApiError::new(status, format!("cannot read the request body: {rejection}")),
    })
}
