//! Canonical proto3 JSON for dynamic messages, with the two documented
//! rules of DESIGN.md §1:
//!
//! - enum values are written as lowercase names without the enum prefix
//!   (`PLAN_GROWTH` ⇄ `"growth"`); both spellings are read;
//! - an unset field marked `(tenlyr.v1.nullable)` is written as `null`;
//!   other unset fields with presence are left out.
//!
//! Everything else is canonical: lowerCamelCase names (proto names are read
//! too), 64-bit integers as strings, well-known types (Timestamp with `Z`,
//! FieldMask, Struct …) as prost-reflect writes them. Errors name the field
//! by its JSON path, e.g. `events[2].value`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, SerializeOptions, Value,
};
use serde::{Serialize, Serializer, ser::SerializeMap as _};
use serde_json::Value as Json;

use crate::error::ApiError;

const NULLABLE_OPTION: &str = "tenlyr.v1.nullable";

/// The aliases of one enum: lowercase short names in declaration order.
#[derive(Debug, Default)]
struct EnumAliases {
    by_number: HashMap<i32, String>,
    by_alias: HashMap<String, i32>,
}

/// Reads and writes JSON for every message of one descriptor pool.
#[derive(Debug)]
pub struct JsonCodec {
    enums: HashMap<String, EnumAliases>,
    nullable: HashSet<String>,
}

impl JsonCodec {
    pub fn new(pool: &DescriptorPool) -> Self {
        let enums = pool
            .all_enums()
            .map(|e| (e.full_name().to_owned(), aliases(&e)))
            .collect();
        let nullable = match pool.get_extension_by_name(NULLABLE_OPTION) {
            Some(ext) => pool
                .all_messages()
                .flat_map(|m| m.fields().collect::<Vec<_>>())
                .filter(|f| f.options().get_extension(&ext).as_bool() == Some(true))
                .map(|f| f.full_name().to_owned())
                .collect(),
            None => HashSet::new(),
        };
        Self { enums, nullable }
    }

    /// Decodes a JSON object into a message of type `desc`.
    pub fn decode(
        &self,
        desc: &MessageDescriptor,
        json: &Json,
    ) -> Result<DynamicMessage, ApiError> {
        self.decode_message(desc, json, &Path::Root(""))
    }

    /// Decodes a JSON value into the value of a (singular) field.
    pub fn decode_value(&self, kind: &Kind, json: &Json, path: &str) -> Result<Value, ApiError> {
        self.decode_value_at(kind, json, &Path::Root(path))
    }

    fn decode_value_at(&self, kind: &Kind, json: &Json, path: &Path) -> Result<Value, ApiError> {
        Ok(match kind {
            Kind::Message(m) => Value::Message(self.decode_message(m, json, path)?),
            Kind::Enum(e) => Value::EnumNumber(self.decode_enum(e, json, path)?),
            Kind::String => Value::String(
                json.as_str()
                    .ok_or_else(|| expected(path, "a string", json))?
                    .to_owned(),
            ),
            Kind::Bool => Value::Bool(
                json.as_bool()
                    .ok_or_else(|| expected(path, "a boolean", json))?,
            ),
            Kind::Bytes => {
                let text = json
                    .as_str()
                    .ok_or_else(|| expected(path, "a base64 string", json))?;
                let engine = &base64::engine::general_purpose::STANDARD;
                let url = &base64::engine::general_purpose::URL_SAFE;
                let bytes = engine
                    .decode(text)
                    .or_else(|_| url.decode(text))
                    .map_err(|_| ApiError::bad_field(path, "expected a base64 string"))?;
                Value::Bytes(bytes.into())
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(int(json, path).and_then(|n| narrow(n, path))?)
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int(json, path)?),
            Kind::Uint32 | Kind::Fixed32 => {
                Value::U32(uint(json, path).and_then(|n| narrow(n, path))?)
            }
            Kind::Uint64 | Kind::Fixed64 => Value::U64(uint(json, path)?),
            Kind::Double => Value::F64(float(json, path)?),
            Kind::Float => Value::F32(float(json, path)? as f32),
        })
    }

    /// Decodes a path variable or query parameter value (always text) into
    /// the value of a field of kind `kind`.
    pub fn decode_text(&self, kind: &Kind, text: &str, path: &str) -> Result<Value, ApiError> {
        self.decode_text_at(kind, text, &Path::Root(path))
    }

    fn decode_text_at(&self, kind: &Kind, text: &str, path: &Path) -> Result<Value, ApiError> {
        let json = match kind {
            Kind::Bool => match text {
                "true" | "1" => Json::Bool(true),
                "false" | "0" => Json::Bool(false),
                _ => return Err(ApiError::bad_field(path, "expected `true` or `false`")),
            },
            Kind::Message(m) if !is_well_known(m) => {
                return Err(ApiError::bad_field(path, "cannot be set from the URL"));
            }
            _ => Json::String(text.to_owned()),
        };
        self.decode_value_at(kind, &json, path)
    }

    fn decode_message(
        &self,
        desc: &MessageDescriptor,
        json: &Json,
        path: &Path,
    ) -> Result<DynamicMessage, ApiError> {
        if is_well_known(desc) {
            return DynamicMessage::deserialize(desc.clone(), json)
                .map_err(|err| ApiError::bad_field(path, wkt_error(desc, &err)));
        }
        let Json::Object(object) = json else {
            return Err(expected(path, "an object", json));
        };
        let mut message = DynamicMessage::new(desc.clone());
        for (key, value) in object {
            let field = field_named(desc, key)
                .ok_or_else(|| ApiError::bad_field(&Path::Field(path, key), "unknown field"))?;
            let field_path = Path::Field(path, field.json_name());
            if value.is_null() && !is_json_value(&field.kind()) {
                continue; // null means "not set"
            }
            if let Some(oneof) = field.containing_oneof()
                && let Some(other) = oneof.fields().find(|f| f != &field && message.has_field(f))
            {
                let msg = format!(
                    "only one of `{}` and `{}` may be set",
                    other.json_name(),
                    field.json_name()
                );
                return Err(ApiError::bad_field(&field_path, msg));
            }
            let decoded = if field.is_map() {
                self.decode_map(&field, value, &field_path)?
            } else if field.is_list() {
                let items = value
                    .as_array()
                    .ok_or_else(|| expected(&field_path, "an array", value))?;
                let kind = field.kind();
                let list = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.decode_value_at(&kind, item, &Path::Index(&field_path, i))
                    })
                    .collect::<Result<_, _>>()?;
                Value::List(list)
            } else {
                self.decode_value_at(&field.kind(), value, &field_path)?
            };
            message.set_field(&field, decoded);
        }
        Ok(message)
    }

    fn decode_map(
        &self,
        field: &FieldDescriptor,
        json: &Json,
        path: &Path,
    ) -> Result<Value, ApiError> {
        let object = json
            .as_object()
            .ok_or_else(|| expected(path, "an object", json))?;
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are messages")
        };
        let (key_kind, value_kind) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        let mut map = HashMap::with_capacity(object.len());
        for (key, value) in object {
            let entry_path = Path::Key(path, key);
            let key = match self.decode_text_at(&key_kind, key, &entry_path)? {
                Value::String(s) => MapKey::String(s),
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                _ => return Err(ApiError::bad_field(&entry_path, "invalid map key")),
            };
            map.insert(key, self.decode_value_at(&value_kind, value, &entry_path)?);
        }
        Ok(Value::Map(map))
    }

    fn decode_enum(
        &self,
        desc: &EnumDescriptor,
        json: &Json,
        path: &Path,
    ) -> Result<i32, ApiError> {
        let found = match json {
            Json::String(s) => desc.get_value_by_name(s).map(|v| v.number()).or_else(|| {
                self.enums
                    .get(desc.full_name())
                    .and_then(|a| a.by_alias.get(s).copied())
            }),
            Json::Number(n) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| desc.get_value(*n).is_some()),
            _ => None,
        };
        found.ok_or_else(|| {
            let choices: Vec<&str> = self
                .enums
                .get(desc.full_name())
                .map(|a| {
                    desc.values()
                        .filter(|v| v.number() != 0)
                        .filter_map(|v| a.by_number.get(&v.number()).map(String::as_str))
                        .collect()
                })
                .unwrap_or_default();
            ApiError::bad_field(path, format!("expected one of: {}", choices.join(", ")))
        })
    }

    /// How an enum value is written (`PLAN_GROWTH` → `growth`).
    pub fn enum_alias(&self, desc: &EnumDescriptor, number: i32) -> String {
        self.enums
            .get(desc.full_name())
            .and_then(|a| a.by_number.get(&number).cloned())
            .unwrap_or_else(|| number.to_string())
    }

    /// Whether an unset `field` is written as `null` (else left out).
    pub fn is_nullable(&self, field: &FieldDescriptor) -> bool {
        self.nullable.contains(field.full_name())
    }

    /// Encodes a message as a JSON object.
    pub fn encode(&self, message: &DynamicMessage) -> Json {
        serde_json::to_value(self.encoded(message)).unwrap_or(Json::Null)
    }

    /// `message`, serializable straight to JSON text (no [`Json`] tree on
    /// the way: replies of a thousand results stay cheap).
    pub fn encoded<'a>(&'a self, message: &'a DynamicMessage) -> Encoded<'a> {
        Encoded {
            codec: self,
            message,
        }
    }
}

/// A message as JSON; see [`JsonCodec::encoded`].
pub struct Encoded<'a> {
    codec: &'a JsonCodec,
    message: &'a DynamicMessage,
}

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (codec, message) = (self.codec, self.message);
        let desc = message.descriptor();
        if is_well_known(&desc) {
            let options = SerializeOptions::new().skip_default_fields(false);
            return message.serialize_with_options(serializer, &options);
        }
        let mut object = serializer.serialize_map(None)?;
        for field in desc.fields() {
            if field.supports_presence() && !message.has_field(&field) {
                if codec.is_nullable(&field) {
                    object.serialize_entry(field.json_name(), &())?;
                }
                continue;
            }
            let value = message.get_field(&field);
            let kind = field.kind();
            if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    unreachable!("map fields are messages")
                };
                let kind = entry.map_entry_value_field().kind();
                object.serialize_entry(
                    field.json_name(),
                    &EncodedMap {
                        codec,
                        kind: &kind,
                        value: &value,
                    },
                )?;
            } else {
                object.serialize_entry(
                    field.json_name(),
                    &EncodedValue {
                        codec,
                        kind: &kind,
                        value: &value,
                    },
                )?;
            }
        }
        object.end()
    }
}

/// One field value (a list is encoded item by item with the field's kind).
pub(super) struct EncodedValue<'a> {
    pub codec: &'a JsonCodec,
    pub kind: &'a Kind,
    pub value: &'a Value,
}

impl Serialize for EncodedValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (codec, kind) = (self.codec, self.kind);
        match self.value {
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::I32(n) => serializer.serialize_i32(*n),
            Value::U32(n) => serializer.serialize_u32(*n),
            Value::I64(n) => serializer.collect_str(n),
            Value::U64(n) => serializer.collect_str(n),
            Value::F32(n) => serialize_float(f64::from(*n), serializer),
            Value::F64(n) => serialize_float(*n, serializer),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) => {
                serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::EnumNumber(n) => {
                let alias = match kind {
                    Kind::Enum(e) => codec
                        .enums
                        .get(e.full_name())
                        .and_then(|a| a.by_number.get(n)),
                    _ => None,
                };
                match alias {
                    Some(alias) => serializer.serialize_str(alias),
                    None => serializer.serialize_i32(*n),
                }
            }
            Value::Message(m) => codec.encoded(m).serialize(serializer),
            Value::List(items) => serializer.collect_seq(items.iter().map(|value| EncodedValue {
                codec,
                kind,
                value,
            })),
            Value::Map(_) => serializer.serialize_unit(), // encoded by their field
        }
    }
}

/// A map field's value.
struct EncodedMap<'a> {
    codec: &'a JsonCodec,
    kind: &'a Kind,
    value: &'a Value,
}

impl Serialize for EncodedMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.value.as_map() else {
            return serializer.serialize_map(Some(0))?.end();
        };
        serializer.collect_map(map.iter().map(|(k, value)| {
            (
                map_key_text(k),
                EncodedValue {
                    codec: self.codec,
                    kind: self.kind,
                    value,
                },
            )
        }))
    }
}

/// Canonical proto3 JSON for floats: non-finite values as strings.
fn serialize_float<S: Serializer>(n: f64, serializer: S) -> Result<S::Ok, S::Error> {
    if n.is_finite() {
        serializer.serialize_f64(n)
    } else if n.is_nan() {
        serializer.serialize_str("NaN")
    } else if n > 0.0 {
        serializer.serialize_str("Infinity")
    } else {
        serializer.serialize_str("-Infinity")
    }
}

/// `PLAN_GROWTH` of enum `Plan` → `growth`; names without the buf-style
/// prefix are lowercased whole.
fn aliases(desc: &EnumDescriptor) -> EnumAliases {
    let prefix = format!("{}_", upper_snake(desc.name()));
    let mut aliases = EnumAliases::default();
    for value in desc.values() {
        let short = value.name().strip_prefix(&prefix).unwrap_or(value.name());
        let alias = short.to_ascii_lowercase();
        aliases.by_alias.insert(alias.clone(), value.number());
        aliases.by_number.entry(value.number()).or_insert(alias);
    }
    aliases
}

fn upper_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.package_name() == "google.protobuf"
}

/// Whether values of `kind` are `google.protobuf.Value`, where JSON `null`
/// is a value rather than "not set".
pub(super) fn is_json_value(kind: &Kind) -> bool {
    matches!(kind, Kind::Message(m) if m.full_name() == "google.protobuf.Value")
}

/// The field of `desc` that a JSON key names: its JSON name or proto name.
pub(super) fn field_named(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(key)
        .or_else(|| desc.get_field_by_name(key))
}

/// Where a value sits in a request, as its JSON path (`events[2].value`);
/// written out only when an error names it.
enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root(path) => f.write_str(path),
            Path::Field(Path::Root(""), key) => f.write_str(key),
            Path::Field(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Key(parent, key) => write!(f, "{parent}[{key}]"),
        }
    }
}

impl From<&Path<'_>> for String {
    fn from(path: &Path<'_>) -> Self {
        path.to_string()
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn expected(path: &Path, what: &str, got: &Json) -> ApiError {
    ApiError::bad_field(path, format!("expected {what}, got {}", kind_of(got)))
}

fn wkt_error(desc: &MessageDescriptor, err: &serde_json::Error) -> String {
    match desc.name() {
        "Timestamp" => "expected an RFC 3339 timestamp such as \"2026-03-14T10:00:00Z\"".to_owned(),
        "Duration" => "expected a duration such as \"1.5s\"".to_owned(),
        "FieldMask" => "expected comma-separated field names such as \"name,region\"".to_owned(),
        _ => err.to_string(),
    }
}

/// An integer from a JSON number (no fraction) or a decimal string.
fn int(json: &Json, path: &Path) -> Result<i64, ApiError> {
    match json {
        Json::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| ApiError::bad_field(path, "expected an integer")),
        Json::String(s) => s
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_field(path, "expected an integer")),
        other => Err(expected(path, "an integer", other)),
    }
}

fn uint(json: &Json, path: &Path) -> Result<u64, ApiError> {
    match json {
        Json::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..9.0e15).contains(f))
                    .map(|f| f as u64)
            })
            .ok_or_else(|| ApiError::bad_field(path, "expected a non-negative integer")),
        Json::String(s) => s
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_field(path, "expected a non-negative integer")),
        other => Err(expected(path, "a non-negative integer", other)),
    }
}

fn narrow<T: TryFrom<U>, U>(n: U, path: &Path) -> Result<T, ApiError> {
    T::try_from(n).map_err(|_| ApiError::bad_field(path, "integer out of range"))
}

fn float(json: &Json, path: &Path) -> Result<f64, ApiError> {
    match json {
        Json::Number(n) => n
            .as_f64()
            .ok_or_else(|| ApiError::bad_field(path, "expected a number")),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_field(path, "expected a number")),
        },
        other => Err(expected(path, "a number", other)),
    }
}

fn map_key_text(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{error::ErrorCode, proto};

    fn codec() -> JsonCodec {
        JsonCodec::new(proto::testing::pool())
    }

    fn book() -> MessageDescriptor {
        proto::testing::pool()
            .get_message_by_name("tenlyr.testing.v1.Book")
            .unwrap()
    }

    #[test]
    fn round_trip_is_canonical_with_documented_rules() {
        let codec = codec();
        let input = json!({
            "shelf": "s1", "id": "b1", "title": "Dune", "pages": 412,
            "genre": "science_fiction", "tags": ["classic"],
            "author": {"name": "Frank", "bornYear": "1920"},
            "publishedAt": "2026-03-14T10:00:00Z",
            "ratings": {"alice": 5}, "extra": {"a": [1, null]}, "edition": 2,
            "cover": "AAE=", "price": 9.5, "inPrint": true, "copies": 3
        });
        let message = codec.decode(&book(), &input).unwrap();
        let out = codec.encode(&message);
        assert_eq!(out["pages"], json!("412"), "int64 is a string");
        assert_eq!(out["author"]["bornYear"], json!("1920"));
        assert_eq!(out["genre"], json!("science_fiction"), "enum alias");
        assert_eq!(
            out["publishedAt"],
            json!("2026-03-14T10:00:00Z"),
            "timestamp with Z"
        );
        assert_eq!(out["returnedAt"], Json::Null, "nullable field is null");
        assert!(
            out.get("subtitle").is_none(),
            "unset optional without nullable is left out"
        );
        assert_eq!(out["ratings"], json!({"alice": 5}));
        assert_eq!(out["extra"], json!({"a": [1.0, null]}));
        assert_eq!(out["edition"], json!(2));
        assert_eq!(out["cover"], json!("AAE="));
        assert_eq!(out["copies"], json!(3));
        assert_eq!(out["tags"], json!(["classic"]));
    }

    #[test]
    fn enums_accept_both_spellings_and_numbers() {
        let codec = codec();
        for spelling in [json!("poetry"), json!("GENRE_POETRY"), json!(2)] {
            let m = codec.decode(&book(), &json!({"genre": spelling})).unwrap();
            assert_eq!(codec.encode(&m)["genre"], json!("poetry"));
        }
        let err = codec
            .decode(&book(), &json!({"genre": "jazz"}))
            .unwrap_err();
        assert_eq!(err.violations[0].field, "genre");
        assert!(
            err.message.contains("science_fiction, poetry"),
            "{}",
            err.message
        );
    }

    #[test]
    fn proto_names_are_read_too() {
        let m = codec()
            .decode(&book(), &json!({"in_print": true, "published_at": null}))
            .unwrap();
        assert_eq!(codec().encode(&m)["inPrint"], json!(true));
    }

    #[test]
    fn errors_name_the_field_path() {
        let codec = codec();
        let cases = [
            (json!({"pages": "many"}), "pages"),
            (json!({"pages": 1.5}), "pages"),
            (json!({"author": {"bornYear": true}}), "author.bornYear"),
            (json!({"tags": ["a", 3]}), "tags[1]"),
            (json!({"nope": 1}), "nope"),
            (json!({"publishedAt": "yesterday"}), "publishedAt"),
            (json!({"copies": -1}), "copies"),
            (json!({"edition": "x"}), "edition"),
            (json!({"title": 5}), "title"),
        ];
        for (input, field) in cases {
            let err = codec.decode(&book(), &input).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{input}");
            assert_eq!(err.violations[0].field, field, "{input}");
        }
        let err = codec.decode(&book(), &json!([1])).unwrap_err();
        assert!(err.message.contains("expected an object"));
    }

    #[test]
    fn field_mask_uses_its_json_string_form() {
        let pool = proto::testing::pool();
        let desc = pool
            .get_message_by_name("tenlyr.testing.v1.UpdateBookRequest")
            .unwrap();
        let codec = codec();
        let m = codec
            .decode(&desc, &json!({"updateMask": "title,author.bornYear"}))
            .unwrap();
        assert_eq!(
            codec.encode(&m)["updateMask"],
            json!("title,author.bornYear")
        );
    }

    #[test]
    fn text_values_for_urls() {
        let codec = codec();
        let desc = book();
        let field = |n: &str| desc.get_field_by_name(n).unwrap().kind();
        assert_eq!(
            codec.decode_text(&field("pages"), "12", "pages").unwrap(),
            Value::I64(12)
        );
        assert_eq!(
            codec
                .decode_text(&field("in_print"), "true", "inPrint")
                .unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            codec
                .decode_text(&field("genre"), "poetry", "genre")
                .unwrap(),
            Value::EnumNumber(2)
        );
        assert!(codec.decode_text(&field("author"), "x", "author").is_err());
        assert!(codec.decode_text(&field("pages"), "x", "pages").is_err());
    }
}
