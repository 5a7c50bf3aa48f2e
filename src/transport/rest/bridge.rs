//! In-process gRPC calls: REST requests are dispatched through the same
//! tonic services (and the same auth layer) as native gRPC, as framed
//! `application/grpc` requests that never leave the process.

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Request headers that describe the HTTP exchange itself and are not
/// passed on as gRPC metadata.
const NOT_METADATA: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-type",
    "content-length",
    "accept-encoding",
    "http2-settings",
    "expect",
];

/// Calls `path` on `service` with one encoded request message.
pub async fn call(
    service: axum::Router,
    path: &str,
    headers: &HeaderMap,
    extensions: http::Extensions,
    message: Vec<u8>,
) -> Result<Response<Body>, tonic::Status> {
    let mut frame = BytesMut::with_capacity(message.len() + 5);
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);

    let mut request = Request::post(path)
        .version(http::Version::HTTP_2)
        .body(Body::from(frame.freeze()))
        .map_err(|err| tonic::Status::internal(err.to_string()))?;
    for (name, value) in headers {
        let name_str = name.as_str();
        if !NOT_METADATA.contains(&name_str) && !name_str.starts_with("grpc-") {
            request.headers_mut().append(name.clone(), value.clone());
        }
    }
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    request
        .headers_mut()
        .insert(header::TE, HeaderValue::from_static("trailers"));
    *request.extensions_mut() = extensions;
    let response = service
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    if response.status() != http::StatusCode::OK {
        return Err(http_status_to_grpc(response.status()));
    }
    if let Some(status) = tonic::Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    Ok(response)
}

/// Reads length-prefixed gRPC messages from a response body, then the
/// status from its trailers.
pub struct MessageReader {
    body: Body,
    buffer: BytesMut,
    done: bool,
}

impl MessageReader {
    pub fn new(body: Body) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            done: false,
        }
    }

    /// The next message; `None` once the stream ended with status OK.
    pub async fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                ]) as usize;
                if self.buffer[0] != 0 {
                    return Err(tonic::Status::internal(
                        "compressed response frames are not supported",
                    ));
                }
                if self.buffer.len() >= 5 + len {
                    self.buffer.advance(5);
                    return Ok(Some(self.buffer.split_to(len).freeze()));
                }
            }
            if self.done {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(tonic::Status::internal("truncated gRPC response"))
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        self.done = true;
                        if let Some(status) = frame
                            .trailers_ref()
                            .and_then(tonic::Status::from_header_map)
                            && status.code() != tonic::Code::Ok
                        {
                            return Err(status);
                        }
                    }
                },
                Some(Err(err)) => return Err(tonic::Status::internal(err.to_string())),
                None => self.done = true,
            }
        }
    }

    /// The single message of a unary response.
    pub async fn single(&mut self) -> Result<Bytes, tonic::Status> {
        let message = self
            .next()
            .await?
            .ok_or_else(|| tonic::Status::internal("empty gRPC response"))?;
        if self.next().await?.is_some() {
            return Err(tonic::Status::internal(
                "unary method answered more than one message",
            ));
        }
        Ok(message)
    }
}

/// The gRPC spec's mapping for an HTTP answer that carries no gRPC status.
fn http_status_to_grpc(status: http::StatusCode) -> tonic::Status {
    let code = match status.as_u16() {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        400 => tonic::Code::Internal,
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(code, format!("upstream answered HTTP {status}"))
}
