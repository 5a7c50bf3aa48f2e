//! REST/JSON transcoding, driven by the `google.api.http` annotations.
//!
//! A request is matched against the [`RouteTable`], turned into the RPC's
//! request message (body, path variables, query parameters), dispatched
//! in-process to the tonic services ([`bridge`]) and the response message
//! turned back into JSON (or raw bytes for `google.api.HttpBody`).

pub mod bridge;
pub mod json;
pub mod openapi;
pub mod routes;
pub mod template;
pub mod wire;

use std::sync::Arc;

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Value as Json, json};

use self::{
    bridge::MessageReader,
    json::JsonCodec,
    routes::{BodyRule, HTTP_BODY, Route, RouteMatch, RouteTable},
};
use crate::error::{ApiError, ErrorCode};

/// Response metadata that services may set and REST passes on as headers.
const FORWARDED_HEADERS: &[&str] = &[
    "content-disposition",
    "x-next-cursor",
    "location",
    "cache-control",
    "retry-after",
    "set-cookie",
    super::idempotency::REPLAYED,
];

/// Metadata key a service sets to choose a non-200 success status (202).
pub const HTTP_STATUS_METADATA: &str = "x-http-status";

pub struct Transcoder {
    routes: RouteTable,
    codec: JsonCodec,
    grpc: axum::Router,
    max_body_bytes: usize,
}

impl Transcoder {
    pub fn new(
        routes: RouteTable,
        codec: JsonCodec,
        grpc: axum::Router,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            routes,
            codec,
            grpc,
            max_body_bytes,
        }
    }

    pub async fn handle(self: Arc<Self>, request: Request<Body>) -> Response {
        match self.transcode(request).await {
            Ok(response) => response,
            Err(err) => error_response(&err),
        }
    }

    async fn transcode(&self, request: Request<Body>) -> Result<Response, ApiError> {
        let (parts, body) = request.into_parts();
        let (route, bindings) = match self.routes.find(&parts.method, parts.uri.path()) {
            RouteMatch::Found(route, bindings) => (route, bindings),
            RouteMatch::MethodNotAllowed(allowed) => {
                let mut allowed: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
                allowed.sort_unstable();
                return Err(ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!(
                        "method {} is not allowed here; allowed: {}",
                        parts.method,
                        allowed.join(", ")
                    ),
                ));
            }
            RouteMatch::NotFound => {
                return Err(ApiError::not_found(format!(
                    "no route for {} {}",
                    parts.method,
                    parts.uri.path()
                ))
                .with_reason("ROUTE_NOT_FOUND"));
            }
        };
        let bytes = read_body(body, self.max_body_bytes).await?;
        let message =
            self.encoded_request(route, &parts.headers, &bytes, bindings, parts.uri.query())?;

        let response = bridge::call(
            self.grpc.clone(),
            &route.grpc_path,
            &parts.headers,
            parts.extensions,
            message,
        )
        .await
        .map_err(|status| ApiError::from_status(&status))?;
        let (head, body) = response.into_parts();
        let mut reader = MessageReader::new(body);
        let status = success_status(&head.headers);
        let mut builder = Response::builder().status(status);
        for name in FORWARDED_HEADERS {
            if let Some(value) = head.headers.get(*name) {
                builder = builder.header(*name, value);
            }
        }
        let output = route.method.output();
        if route.raw_response() {
            return self.raw_response(route, output, reader, builder).await;
        }
        let bytes = reader
            .single()
            .await
            .map_err(|s| ApiError::from_status(&s))?;
        let decode = || DynamicMessage::decode(output.clone(), bytes.clone());
        let body = match &route.response_body {
            Some(field) => {
                let decoded = decode().map_err(ApiError::internal)?;
                serde_json::to_vec(&self.encode_field(&decoded, field))
            }
            // Written straight from the bytes when it can be; else decoded.
            None => {
                let reply = wire::Reply {
                    codec: &self.codec,
                    desc: &output,
                    bytes: &bytes,
                };
                match serde_json::to_vec(&reply) {
                    Ok(body) => Ok(body),
                    Err(_) => {
                        let decoded = decode().map_err(ApiError::internal)?;
                        serde_json::to_vec(&self.codec.encoded(&decoded))
                    }
                }
            }
        }
        .map_err(ApiError::internal)?;
        builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .map_err(ApiError::internal)
    }

    /// The RPC's request message, encoded: a body bound whole and nothing in
    /// the path or query takes the short way ([`wire`]) when it can.
    fn encoded_request(
        &self,
        route: &Route,
        headers: &HeaderMap,
        body: &Bytes,
        bindings: Vec<template::Binding>,
        query: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        let alone = bindings.is_empty() && query.is_none_or(str::is_empty);
        if alone
            && matches!(route.body, BodyRule::Whole)
            && let Some(encoded) = wire::encode(&self.codec, &route.method.input(), body)
        {
            return Ok(encoded);
        }
        Ok(self
            .request_message(route, headers, body, bindings, query)?
            .encode_to_vec())
    }

    /// Builds the RPC's request message from body, path and query.
    fn request_message(
        &self,
        route: &Route,
        headers: &HeaderMap,
        body: &Bytes,
        bindings: Vec<template::Binding>,
        query: Option<&str>,
    ) -> Result<DynamicMessage, ApiError> {
        let input = route.method.input();
        let mut message = match &route.body {
            BodyRule::Whole => self.codec.decode(&input, &parse_json(body)?)?,
            BodyRule::Field(field) => {
                let mut message = DynamicMessage::new(input.clone());
                let value = match field.kind() {
                    Kind::Message(m) if m.full_name() == HTTP_BODY => {
                        Value::Message(http_body(&m, headers, body))
                    }
                    kind => {
                        self.codec
                            .decode_value(&kind, &parse_json(body)?, field.json_name())?
                    }
                };
                message.set_field(field, value);
                message
            }
            BodyRule::None => {
                if !body.iter().all(u8::is_ascii_whitespace) {
                    return Err(ApiError::bad_request(format!(
                        "{} {} takes no request body",
                        route.http_method, route.template
                    )));
                }
                DynamicMessage::new(input.clone())
            }
        };
        let mut bound: Vec<FieldDescriptor> = Vec::new();
        for (path, text) in bindings {
            let field = routes::resolve(&input, &path).map_err(ApiError::internal)?;
            let name = json_path(&input, &path);
            // A path segment that is no value of its enum names nothing:
            // 404, as an unknown route (`/v1/webhooks/square`).
            let value = match self.codec.decode_text(&field.kind(), &text, &name) {
                Ok(value) => value,
                Err(err) if matches!(field.kind(), Kind::Enum(_)) => {
                    return Err(ApiError::not_found(err.message).with_reason("ROUTE_NOT_FOUND"));
                }
                Err(err) => return Err(err),
            };
            let target = leaf_message(&mut message, &path);
            if target.has_field(&field) && *target.get_field(&field) != value {
                return Err(ApiError::bad_field(
                    name,
                    "the body contradicts the value in the path",
                ));
            }
            target.set_field(&field, value);
            bound.push(field);
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            for (key, text) in form_urlencoded::parse(query.as_bytes()) {
                self.set_query_param(route, &mut message, &bound, &key, &text)?;
            }
        }
        Ok(message)
    }

    fn set_query_param(
        &self,
        route: &Route,
        message: &mut DynamicMessage,
        bound: &[FieldDescriptor],
        key: &str,
        text: &str,
    ) -> Result<(), ApiError> {
        let unknown = || ApiError::bad_field(key, "unknown query parameter");
        if matches!(route.body, BodyRule::Whole) {
            return Err(unknown());
        }
        let mut path = Vec::new();
        let mut desc = message.descriptor();
        let names: Vec<&str> = key.split('.').collect();
        let mut field = None;
        for (i, name) in names.iter().enumerate() {
            let f = json::field_named(&desc, name).ok_or_else(unknown)?;
            if i + 1 < names.len() {
                match f.kind() {
                    Kind::Message(m) if !f.is_list() && !f.is_map() => desc = m,
                    _ => return Err(unknown()),
                }
            }
            path.push(f.name().to_owned());
            field = Some(f);
        }
        let field = field.ok_or_else(unknown)?;
        if bound.contains(&field)
            || matches!(&route.body, BodyRule::Field(b) if path[0] == b.name())
        {
            return Err(ApiError::bad_field(
                key,
                "already bound by the path or body",
            ));
        }
        if field.is_map() {
            return Err(ApiError::bad_field(
                key,
                "map fields cannot be set from the query",
            ));
        }
        let value = self.codec.decode_text(&field.kind(), text, key)?;
        let target = leaf_message(message, &path);
        if field.is_list() {
            match target.get_field_mut(&field) {
                Value::List(items) => items.push(value),
                _ => return Err(ApiError::internal("repeated field without a list value")),
            }
        } else {
            if target.has_field(&field) {
                return Err(ApiError::bad_field(key, "given more than once"));
            }
            target.set_field(&field, value);
        }
        Ok(())
    }

    fn encode_field(&self, message: &DynamicMessage, field: &FieldDescriptor) -> Json {
        let value = message.get_field(field);
        match value.as_ref() {
            Value::List(items) => Json::Array(
                items
                    .iter()
                    .filter_map(|v| v.as_message().map(|m| self.codec.encode(m)))
                    .collect(),
            ),
            Value::Message(m) if message.has_field(field) => self.codec.encode(m),
            _ => Json::Null,
        }
    }

    /// Streams `google.api.HttpBody` messages (one for unary methods) as the
    /// raw response body; the first one decides the Content-Type.
    async fn raw_response(
        &self,
        route: &Route,
        output: MessageDescriptor,
        mut reader: MessageReader,
        builder: http::response::Builder,
    ) -> Result<Response, ApiError> {
        let response_body = route.response_body.clone();
        let chunk = move |bytes: Bytes| -> Result<(String, Bytes), ApiError> {
            let message =
                DynamicMessage::decode(output.clone(), bytes).map_err(ApiError::internal)?;
            let body = match &response_body {
                Some(field) => message
                    .get_field(field)
                    .as_message()
                    .cloned()
                    .unwrap_or_else(|| DynamicMessage::new(output.clone())),
                None => message,
            };
            let text = |name| {
                body.get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            let data = body
                .get_field_by_name("data")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            Ok((text("content_type"), data))
        };
        let first = reader.next().await.map_err(|s| ApiError::from_status(&s))?;
        let (content_type, data) = match first {
            Some(bytes) => chunk(bytes)?,
            None => (String::new(), Bytes::new()),
        };
        let rest = stream::unfold((reader, chunk), |(mut reader, chunk)| async move {
            match reader.next().await {
                Ok(Some(bytes)) => {
                    let item = chunk(bytes)
                        .map(|(_, data)| data)
                        .map_err(|e| std::io::Error::other(e.message));
                    Some((item, (reader, chunk)))
                }
                Ok(None) => None,
                Err(status) => {
                    // Headers are sent: a failed stream can only be cut short.
                    tracing::warn!(code = ?status.code(), message = status.message(), "streamed response failed");
                    Some((
                        Err(std::io::Error::other(status.message().to_owned())),
                        (reader, chunk),
                    ))
                }
            }
        });
        let body = stream::once(async move { Ok::<_, std::io::Error>(data) }).chain(rest);
        let content_type = if content_type.is_empty() {
            "application/octet-stream".to_owned()
        } else {
            content_type
        };
        builder
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from_stream(body))
            .map_err(ApiError::internal)
    }
}

fn success_status(headers: &HeaderMap) -> StatusCode {
    headers
        .get(HTTP_STATUS_METADATA)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(StatusCode::is_success)
        .unwrap_or(StatusCode::OK)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )),
        Err(err) => Err(ApiError::bad_request(format!(
            "could not read the request body: {err}"
        ))),
    }
}

fn parse_json(body: &Bytes) -> Result<Json, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!("malformed JSON body: {err}"))
            .with_violation("", err.to_string())
    })
}

fn http_body(desc: &MessageDescriptor, headers: &HeaderMap, body: &Bytes) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    message.set_field_by_name("content_type", Value::String(content_type.to_owned()));
    message.set_field_by_name("data", Value::Bytes(body.clone()));
    message
}

/// The message that holds the last field of `path`, creating the
/// intermediate messages.
fn leaf_message<'a>(message: &'a mut DynamicMessage, path: &[String]) -> &'a mut DynamicMessage {
    let mut current = message;
    for name in &path[..path.len() - 1] {
        current = match current.get_field_by_name_mut(name) {
            Some(Value::Message(m)) => m,
            _ => unreachable!("validated as a singular message field"),
        };
    }
    current
}

/// The JSON spelling of a proto field path, for error messages.
fn json_path(desc: &MessageDescriptor, path: &[String]) -> String {
    let mut names = Vec::with_capacity(path.len());
    let mut current = desc.clone();
    for name in path {
        let Some(field) = current.get_field_by_name(name) else {
            break;
        };
        names.push(field.json_name().to_owned());
        if let Kind::Message(m) = field.kind() {
            current = m;
        }
    }
    names.join(".")
}

/// The documented error body: `{message, error, statusCode}` plus `reason`
/// and, when fields are named, `details`.
///
/// The inbound gateway's refusals keep the bodies its docs give
/// (`002_e947b442571a306e.txt`): `{"error": "invalid signature"}`,
/// `{"error": "missing event id"}` (and, in the same shape, an invalid
/// payload) and `{"message": "tenant not allowed"}`.
pub fn error_response(err: &ApiError) -> Response {
    let status = err.code.http_status();
    match err.reason() {
        "INVALID_SIGNATURE" | "MISSING_EVENT_ID" | "INVALID_PAYLOAD" => {
            return (status, axum::Json(json!({"error": err.message}))).into_response();
        }
        "TENANT_NOT_ALLOWED" => {
            return (status, axum::Json(json!({"message": err.message}))).into_response();
        }
        _ => {}
    }
    let mut body = json!({
        "message": err.message,
        "error": status.canonical_reason().unwrap_or("Error"),
        "statusCode": status.as_u16(),
        "reason": err.reason(),
    });
    if !err.violations.is_empty() {
        body["details"] = err
            .violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(delay) = err.retry_after {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if let Some((policy, state)) = err.rate_limit.as_deref()
        && let (Ok(policy), Ok(state)) =
            (HeaderValue::try_from(policy), HeaderValue::try_from(state))
    {
        let headers = response.headers_mut();
        headers.insert(crate::error::RATE_LIMIT_POLICY, policy);
        headers.insert(crate::error::RATE_LIMIT, state);
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::post};
    use bytes::{BufMut, BytesMut};
    use http::{HeaderMap as Headers, Method};
    use http_body::Frame;
    use http_body_util::StreamBody;
    use serde_json::json;

    use super::*;
    use crate::proto;

    const PACKAGE: &str = "tenlyr.testing.v1";

    fn pool() -> &'static prost_reflect::DescriptorPool {
        proto::testing::pool()
    }

    fn message(name: &str, value: serde_json::Value) -> DynamicMessage {
        let desc = pool()
            .get_message_by_name(&format!("{PACKAGE}.{name}"))
            .unwrap();
        JsonCodec::new(pool()).decode(&desc, &value).unwrap()
    }

    /// A gRPC response: `messages` framed, then an OK status in trailers.
    fn grpc_reply(
        messages: Vec<DynamicMessage>,
        headers: &[(&'static str, &'static str)],
    ) -> Response {
        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = messages
            .into_iter()
            .map(|m| {
                let bytes = m.encode_to_vec();
                let mut frame = BytesMut::new();
                frame.put_u8(0);
                frame.put_u32(bytes.len() as u32);
                frame.put_slice(&bytes);
                Ok(Frame::data(frame.freeze()))
            })
            .collect();
        let mut trailers = Headers::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        frames.push(Ok(Frame::trailers(trailers)));
        let mut response = Response::new(Body::new(StreamBody::new(stream::iter(frames))));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        for (name, value) in headers {
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
        response
    }

    /// Fake LibraryService: ListBooks answers two books, ReadFile streams two
    /// HttpBody chunks, GetBook echoes the request name as the title.
    fn library() -> axum::Router {
        axum::Router::new()
            .route(
                "/tenlyr.testing.v1.LibraryService/ListBooks",
                post(|| async {
                    let reply = message(
                        "ListBooksResponse",
                        json!({"books": [{"id": "1", "pages": 10, "genre": "poetry"}, {"id": "2"}]}),
                    );
                    grpc_reply(vec![reply], &[("x-next-cursor", "abc")])
                }),
            )
            .route(
                "/tenlyr.testing.v1.LibraryService/ReadFile",
                post(|| async {
                    let chunk = |data: &str| {
                        let mut m = DynamicMessage::new(pool().get_message_by_name(HTTP_BODY).unwrap());
                        m.set_field_by_name("content_type", Value::String("text/csv".into()));
                        m.set_field_by_name("data", Value::Bytes(Bytes::from(data.to_owned())));
                        m
                    };
                    grpc_reply(vec![chunk("a,b\n"), chunk("1,2\n")], &[("content-disposition", "attachment; filename=\"x.csv\"")])
                }),
            )
    }

    fn transcoder() -> Arc<Transcoder> {
        let routes = RouteTable::from_pool(pool(), PACKAGE).unwrap();
        Arc::new(Transcoder::new(
            routes,
            JsonCodec::new(pool()),
            library(),
            1024,
        ))
    }

    fn build(
        t: &Transcoder,
        method: Method,
        uri: &str,
        body: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let uri: http::Uri = uri.parse().unwrap();
        let RouteMatch::Found(route, bindings) = t.routes.find(&method, uri.path()) else {
            panic!("no route")
        };
        let mut headers = Headers::new();
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let encoded = t.encoded_request(
            route,
            &headers,
            &Bytes::from(body.to_owned()),
            bindings,
            uri.query(),
        )?;
        let message = DynamicMessage::decode(route.method.input(), encoded.as_slice()).unwrap();
        Ok(t.codec.encode(&message))
    }

    #[test]
    fn query_parameters_map_to_fields_dotted_and_repeated() {
        let t = transcoder();
        let uri = "/v1/shelves/s1/books?limit=5&genres=poetry&genres=GENRE_SCIENCE_FICTION&author.name=Frank&author.born_year=1920&ids=1&ids=2&since=2026-01-01T00:00:00Z";
        let m = build(&t, Method::GET, uri, "").unwrap();
        assert_eq!(m["shelf"], "s1");
        assert_eq!(m["limit"], 5);
        assert_eq!(m["genres"], json!(["poetry", "science_fiction"]));
        assert_eq!(m["author"], json!({"name": "Frank", "bornYear": "1920"}));
        assert_eq!(m["ids"], json!(["1", "2"]));
        assert_eq!(m["since"], "2026-01-01T00:00:00Z");

        let err = build(&t, Method::GET, "/v1/shelves/s1/books?shelf=s2", "").unwrap_err();
        assert_eq!(err.violations[0].field, "shelf");
        let err = build(&t, Method::GET, "/v1/shelves/s1/books?author=x", "").unwrap_err();
        assert_eq!(err.violations[0].field, "author");
    }

    #[test]
    fn body_field_and_nested_path_variables() {
        let t = transcoder();
        let m = build(
            &t,
            Method::POST,
            "/v1/shelves/s1/books",
            r#"{"title": "Dune", "pages": "412"}"#,
        )
        .unwrap();
        assert_eq!(m["shelf"], "s1");
        assert_eq!(m["book"]["title"], "Dune");
        assert_eq!(m["book"]["pages"], "412");

        let m = build(
            &t,
            Method::PATCH,
            "/v1/shelves/s1/books/b1",
            r#"{"book": {"title": "x"}, "updateMask": "title"}"#,
        )
        .unwrap();
        assert_eq!(m["book"]["shelf"], "s1");
        assert_eq!(m["book"]["id"], "b1");
        assert_eq!(m["updateMask"], "title");
        let err = build(
            &t,
            Method::PATCH,
            "/v1/shelves/s1/books/b1",
            r#"{"book": {"id": "b2"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "book.id");
        let err = build(&t, Method::PATCH, "/v1/shelves/s1/books/b1?title=x", "{}").unwrap_err();
        assert_eq!(err.violations[0].field, "title");
    }

    #[test]
    fn raw_http_body_requests_keep_bytes_and_content_type() {
        let t = transcoder();
        let m = build(&t, Method::POST, "/v1/uploads/s1", "not json {").unwrap();
        assert_eq!(m["body"]["contentType"], "text/plain");
        assert_eq!(m["body"]["data"], "bm90IGpzb24gew==");
        let m = build(
            &t,
            Method::POST,
            "/v1/shelves/s1:archive",
            r#"{"reason": "old"}"#,
        )
        .unwrap();
        assert_eq!(
            (m["shelf"].as_str(), m["reason"].as_str()),
            (Some("s1"), Some("old"))
        );
    }

    async fn call(t: &Arc<Transcoder>, uri: &str) -> (StatusCode, Headers, Bytes) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = t.clone().handle(request).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn response_body_selects_a_field_and_forwards_metadata() {
        let t = transcoder();
        let (status, headers, body) = call(&t, "/v1/shelves/s1/books").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-next-cursor"], "abc");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.is_array(), "bare array: {json}");
        assert_eq!(json[0]["pages"], "10");
        assert_eq!(json[0]["genre"], "poetry");
        assert_eq!(json[1]["returnedAt"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn streamed_http_body_becomes_the_raw_response() {
        let t = transcoder();
        let (status, headers, body) = call(&t, "/v1/files/reports/q1.csv").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"x.csv\""
        );
        assert_eq!(&body[..], b"a,b\n1,2\n");
    }

    #[tokio::test]
    async fn missing_service_method_is_501_not_500() {
        // GetBook is bound but the fake service does not serve it: its
        // router answers a plain HTTP 404, which the gRPC spec maps to
        // UNIMPLEMENTED.
        let t = transcoder();
        let (status, _, body) = call(&t, "/v1/books/b1").await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["statusCode"], 501);
    }
}
