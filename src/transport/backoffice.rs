//! The Backoffice web UI (`backoffice/` in the repository): three static
//! files embedded in the binary and served under `/backoffice/` on the API's
//! port. The UI is a client of the public REST API; nothing here decides
//! anything.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

const INDEX: &str = include_str!("../../backoffice/index.html");
const SCRIPT: &str = include_str!("../../backoffice/app.js");
const STYLE: &str = include_str!("../../backoffice/app.css");

/// Scripts and styles from this origin only; no framing; no referrer (the
/// invite and reset tokens travel in the URL fragment, which browsers never
/// send, but the rule costs nothing).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/backoffice/` and its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/backoffice",
            get(|| async { Redirect::permanent("/backoffice/") }),
        )
        .route(
            "/backoffice/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/backoffice/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/backoffice/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
