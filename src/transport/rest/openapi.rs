//! The OpenAPI 3.1 document of the REST API, generated from the same
//! descriptor pool, route table and JSON rules the transcoder uses, so it
//! cannot drift from what the server does: paths and methods from the
//! `google.api.http` annotations, lowerCamelCase names, enum aliases,
//! 64-bit integers as strings, `(tenlyr.v1.nullable)` fields as `null`,
//! well-known types as canonical proto3 JSON, the documented error body,
//! and the security of each RPC from its `(tenlyr.v1.access)` option.
//!
//! Response schemas list every field that is always written (fields
//! without presence, and nullable ones) as `required`; request schemas
//! (`…Input`) require nothing beyond path parameters, as the decoder does.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::{
    json::JsonCodec,
    routes::{BodyRule, HTTP_BODY, Route, RouteTable},
};
use crate::{
    domain::user::SessionRule,
    proto::v1::Access,
    transport::auth::{AccessTable, Rule},
};

/// Which schema variant a message is wanted in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

struct Builder<'a> {
    codec: &'a JsonCodec,
    schemas: BTreeMap<String, Json>,
}

fn schema_name(desc: &MessageDescriptor, side: Side) -> String {
    match side {
        Side::Response => desc.full_name().to_owned(),
        Side::Request => format!("{}Input", desc.full_name()),
    }
}

fn reference(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `int64` and friends as the decimal strings the codec writes.
fn int64(unsigned: bool) -> Json {
    let pattern = if unsigned { "^[0-9]+$" } else { "^-?[0-9]+$" };
    json!({"type": "string", "format": if unsigned { "uint64" } else { "int64" }, "pattern": pattern})
}

impl Builder<'_> {
    /// The schema of one value of `kind`.
    fn kind(&mut self, kind: &Kind, side: Side) -> Json {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int32", "minimum": 0})
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int64(false),
            Kind::Uint64 | Kind::Fixed64 => int64(true),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(e) => {
                let values: Vec<Json> = e
                    .values()
                    .filter(|v| side == Side::Response || v.number() != 0)
                    .map(|v| Json::String(self.codec.enum_alias(e, v.number())))
                    .collect();
                json!({"type": "string", "enum": values})
            }
            Kind::Message(m) => self.message(m, side),
        }
    }

    /// A message: well-known types inline, others by reference.
    fn message(&mut self, desc: &MessageDescriptor, side: Side) -> Json {
        match desc.full_name() {
            "google.protobuf.Timestamp" => {
                return json!({"type": "string", "format": "date-time"});
            }
            "google.protobuf.Duration" => {
                return json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"});
            }
            "google.protobuf.FieldMask" => return json!({"type": "string"}),
            "google.protobuf.Struct" => return json!({"type": "object"}),
            "google.protobuf.Value" => return json!({}),
            "google.protobuf.ListValue" => return json!({"type": "array"}),
            "google.protobuf.Empty" => return json!({"type": "object"}),
            "google.protobuf.StringValue" => return json!({"type": "string"}),
            "google.protobuf.BoolValue" => return json!({"type": "boolean"}),
            "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
                return json!({"type": "number"});
            }
            "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
                return json!({"type": "integer"});
            }
            "google.protobuf.Int64Value" => return int64(false),
            "google.protobuf.UInt64Value" => return int64(true),
            _ => {}
        }
        let name = schema_name(desc, side);
        if !self.schemas.contains_key(&name) {
            // Placeholder first: recursive messages refer to themselves.
            self.schemas.insert(name.clone(), json!({}));
            let schema = self.object(desc, side, &[]);
            self.schemas.insert(name.clone(), schema);
        }
        reference(&name)
    }

    /// The object schema of `desc` without the fields in `skip` (bound
    /// to the path).
    fn object(&mut self, desc: &MessageDescriptor, side: Side, skip: &[String]) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in desc.fields() {
            if skip.iter().any(|s| s == field.name()) {
                continue;
            }
            let mut schema = self.field(&field, side);
            let nullable = self.codec.is_nullable(&field);
            if nullable {
                schema = json!({"oneOf": [schema, {"type": "null"}]});
            }
            if side == Side::Response && (!field.supports_presence() || nullable) {
                required.push(Json::String(field.json_name().to_owned()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut object = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            object["required"] = Json::Array(required);
        }
        object
    }

    fn field(&mut self, field: &FieldDescriptor, side: Side) -> Json {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map fields are messages")
            };
            let value = self.kind(&entry.map_entry_value_field().kind(), side);
            return json!({"type": "object", "additionalProperties": value});
        }
        let item = self.kind(&field.kind(), side);
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }
}

/// `{field.path=…}` → `{jsonName}`: the OpenAPI path and its parameters.
fn path_and_params(route: &Route, builder: &mut Builder<'_>) -> (String, Vec<Json>, Vec<String>) {
    let source = route.template.to_string();
    let input = route.method.input();
    let mut path = String::new();
    let mut params = Vec::new();
    let mut bound = Vec::new();
    let mut rest = source.as_str();
    for var in route.template.variables() {
        let Some(open) = rest.find('{') else { break };
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        path.push_str(&rest[..open]);
        let mut current = input.clone();
        let mut names = Vec::new();
        let mut schema = json!({"type": "string"});
        for (i, part) in var.field_path.iter().enumerate() {
            let Some(f) = current.get_field_by_name(part) else {
                break;
            };
            names.push(f.json_name().to_owned());
            match f.kind() {
                Kind::Message(m) if i + 1 < var.field_path.len() => current = m,
                kind => schema = builder.kind(&kind, Side::Request),
            }
        }
        let name = names.join(".");
        path.push_str(&format!("{{{name}}}"));
        params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        if let Some(first) = var.field_path.first() {
            bound.push(first.clone());
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    path.push_str(rest);
    (path, params, bound)
}

/// Query parameters: every top-level field of a body-less request not
/// bound to the path (messages such as timestamps as their JSON text).
fn query_params(route: &Route, builder: &mut Builder<'_>, skip: &[String]) -> Vec<Json> {
    let input = route.method.input();
    let body_field = match &route.body {
        BodyRule::Whole => return Vec::new(),
        BodyRule::Field(f) => Some(f.name().to_owned()),
        BodyRule::None => None,
    };
    input
        .fields()
        .filter(|f| !skip.iter().any(|s| s == f.name()))
        .filter(|f| body_field.as_deref() != Some(f.name()))
        .filter(|f| !f.is_map())
        .filter(|f| match f.kind() {
            Kind::Message(m) => m.full_name().starts_with("google.protobuf."),
            _ => true,
        })
        .map(|f| {
            let schema = builder.field(&f, Side::Request);
            json!({"name": f.json_name(), "in": "query", "required": false, "schema": schema})
        })
        .collect()
}

fn error_schema() -> Json {
    json!({
        "type": "object",
        "description": "The documented error body.",
        "properties": {
            "message": {"type": "string"},
            "error": {"type": "string"},
            "statusCode": {"type": "integer"},
            "reason": {"type": "string"},
            "details": {"type": "array", "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                "required": ["field", "description"]
            }}
        },
        "required": ["message", "error", "statusCode"]
    })
}

/// The keys an RPC accepts, and the Backoffice session when its
/// `(tenlyr.v1.session)` rule admits one (a session's role is checked by
/// the server; OpenAPI cannot say which roles).
fn security(rule: Option<Rule>) -> Json {
    let mut schemes = match rule.map(|r| r.access) {
        Some(Access::Admin) => vec![json!({"adminKey": []})],
        Some(Access::Tenant) => vec![json!({"tenantKey": []})],
        Some(Access::AdminOrTenant) => vec![json!({"adminKey": []}), json!({"tenantKey": []})],
        _ => return json!([]),
    };
    if rule.is_some_and(|r| r.session != SessionRule::None) {
        schemes.push(json!({"session": []}));
    }
    Json::Array(schemes)
}

fn tag(access: Option<Access>) -> &'static str {
    match access {
        Some(Access::Admin) => "admin",
        Some(Access::Tenant) => "tenant",
        Some(Access::AdminOrTenant) => "admin-or-tenant",
        _ => "public",
    }
}

/// Whether an RPC answers with the inbound gateway's documented bodies.
fn is_gateway(route: &Route) -> bool {
    matches!(
        route.method.name(),
        "ReceiveWebhook" | "ReceiveWebhookBySlug"
    )
}

/// The whole document.
pub fn document(routes: &RouteTable, codec: &JsonCodec, access: &AccessTable) -> Json {
    let mut builder = Builder {
        codec,
        schemas: BTreeMap::new(),
    };
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    for route in routes.routes() {
        let (path, mut parameters, bound) = path_and_params(route, &mut builder);
        parameters.extend(query_params(route, &mut builder, &bound));
        let rule = access.rule(&route.grpc_path);
        let mut operation = json!({
            "operationId": route.method.name(),
            "summary": route.method.name(),
            "tags": [tag(rule.map(|r| r.access))],
            "security": security(rule),
            "parameters": parameters,
        });
        let input = route.method.input();
        match &route.body {
            BodyRule::None => {}
            BodyRule::Whole => {
                let schema = builder.object(&input, Side::Request, &bound);
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schema}}
                });
            }
            BodyRule::Field(f) => {
                let raw = matches!(f.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY);
                operation["requestBody"] = if raw {
                    json!({"required": true, "content": {"*/*": {"schema": {}}}})
                } else {
                    let schema = builder.field(f, Side::Request);
                    json!({"required": true, "content": {"application/json": {"schema": schema}}})
                };
            }
        }
        let success = if route.raw_response() {
            json!({"description": "Raw bytes", "content": {"*/*": {"schema": {}}}})
        } else {
            let schema = match &route.response_body {
                Some(f) => builder.field(f, Side::Response),
                None => builder.message(&route.method.output(), Side::Response),
            };
            json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
        };
        let mut responses = Map::new();
        responses.insert("200".into(), success.clone());
        let error = json!({
            "description": "The documented error body",
            "content": {"application/json": {"schema": reference("Error")}}
        });
        if is_gateway(route) {
            let mut queued = success;
            queued["description"] = json!("Spooled while Postgres is unreachable (`queued: true`)");
            responses.insert("202".into(), queued);
            responses.insert("400".into(), json!({
                "description": "Invalid signature, missing event id, invalid payload, or a malformed request",
                "content": {"application/json": {"schema": {"anyOf": [
                    {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                    reference("Error")
                ]}}}
            }));
            responses.insert("403".into(), json!({
                "description": "Tenant not allowed",
                "content": {"application/json": {"schema": {"anyOf": [
                    {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
                    reference("Error")
                ]}}}
            }));
        }
        responses.insert("default".into(), error);
        operation["responses"] = Json::Object(responses);
        paths
            .entry(path)
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
    }
    builder.schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tenlyr",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Tenlyr control plane's REST API, generated from its protos' google.api.http annotations (the same RPCs are served over gRPC and gRPC-Web on the same port)."
        },
        "paths": paths,
        "components": {
            "schemas": builder.schemas,
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin key (`tenlyr_live_tf_…`)."},
                "tenantKey": {"type": "http", "scheme": "bearer", "description": "A tenant key (`tenlyr_live_…`)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "tenlyr_session", "description": "A Backoffice session (`POST /api/v1/auth/login`). Requests that are not GET must also send the session's `csrfToken` in `X-CSRF-Token`; each RPC declares the least role it needs."}
            }
        }
    })
}
