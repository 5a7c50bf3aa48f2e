//! The short ways between JSON and protobuf bytes.
//!
//! [`JsonCodec`] reads a body into a JSON tree, then into a
//! `DynamicMessage`, which is then encoded: three copies of every event of
//! a 1,000-event batch. This pass reads the JSON text once and writes the
//! wire format as it goes, with the same meaning: objects and arrays are
//! walked here, and every other value (strings aside) is read by the codec
//! itself, so numbers, enums, bytes and well-known types follow its rules
//! by construction.
//!
//! It takes only what it can take without deciding anything the codec
//! would decide differently: malformed JSON, an unknown field, a value the
//! codec refuses, a field given twice, two members of a oneof, a map. For
//! those it gives up, and the caller takes the general way, which accepts
//! or writes the documented error.
//!
//! The other way, [`Reply`] writes a reply's JSON straight from its bytes:
//! the same text as [`JsonCodec::encoded`] of the decoded message (fields
//! in declaration order, defaults written, unset nullable fields `null`;
//! scalars through the codec's own writer), without decoding it into a
//! `DynamicMessage` first. It fails on what it does not read (a map with
//! entries, a message field sent twice, malformed bytes), and the caller
//! decodes.

use std::fmt;

use bytes::Bytes;
use prost::{
    Message as _,
    encoding::{self, WireType, decode_key, decode_varint, encode_key, encode_varint},
};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use serde::{
    Deserialize as _, Serialize, Serializer,
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
    ser::{self, SerializeMap as _},
};
use serde_json::Value as Json;

use super::json::{EncodedValue, JsonCodec, field_named, is_json_value, is_well_known};

/// `body`, a JSON object, as the encoded message `desc`; `None` when this
/// pass does not take it (see the module doc).
pub fn encode(codec: &JsonCodec, desc: &MessageDescriptor, body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut json = serde_json::Deserializer::from_slice(body);
    MessageSeed {
        codec,
        desc,
        out: &mut out,
    }
    .deserialize(&mut json)
    .ok()?;
    json.end().ok()?;
    Some(out)
}

/// The error that sends a body the general way; its text is never shown.
fn give_up<E: de::Error>() -> E {
    E::custom("left to the general way")
}

/// The fields of one JSON object, appended to `out`.
struct MessageSeed<'a> {
    codec: &'a JsonCodec,
    desc: &'a MessageDescriptor,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut written: Vec<u32> = Vec::new();
        while let Some(field) = map.next_key_seed(FieldName(self.desc))? {
            let taken = |f: &FieldDescriptor| written.contains(&f.number());
            let other_member = field
                .containing_oneof()
                .is_some_and(|oneof| oneof.fields().any(|f| f != field && taken(&f)));
            if taken(&field) || other_member || field.is_map() {
                return Err(give_up());
            }
            let seed = FieldSeed {
                codec: self.codec,
                field: &field,
                out: self.out,
            };
            if map.next_value_seed(seed)? {
                written.push(field.number());
            }
        }
        Ok(())
    }
}

/// A key of a JSON object: the field it names (JSON or proto name).
struct FieldName<'a>(&'a MessageDescriptor);

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = FieldDescriptor;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldName<'_> {
    type Value = FieldDescriptor;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        field_named(self.0, key).ok_or_else(give_up)
    }
}

/// The value of one field; answers whether anything was written (`null`
/// leaves a field unset).
struct FieldSeed<'a> {
    codec: &'a JsonCodec,
    field: &'a FieldDescriptor,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let kind = self.field.kind();
        let walked = self.field.is_list() || matches!(&kind, Kind::Message(m) if !is_well_known(m));
        if walked {
            return deserializer.deserialize_any(self);
        }
        let number = self.field.number();
        if kind == Kind::String {
            return deserializer.deserialize_any(StringField {
                number,
                out: self.out,
            });
        }
        let json = Json::deserialize(deserializer)?;
        if json.is_null() && !is_json_value(&kind) {
            return Ok(false);
        }
        put_value(self.codec, number, &kind, &json, self.out)?;
        Ok(true)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object, an array or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        if is_json_value(&self.field.kind()) {
            return Err(give_up()); // a list of google.protobuf.Value given null
        }
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        let Kind::Message(desc) = self.field.kind() else {
            return Err(give_up());
        };
        if self.field.is_list() {
            return Err(give_up());
        }
        let mut inner = Vec::new();
        MessageSeed {
            codec: self.codec,
            desc: &desc,
            out: &mut inner,
        }
        .visit_map(map)?;
        put_delimited(self.field.number(), &inner, self.out);
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        if !self.field.is_list() {
            return Err(give_up());
        }
        let number = self.field.number();
        match self.field.kind() {
            Kind::Message(desc) if !is_well_known(&desc) => {
                let mut inner = Vec::new();
                loop {
                    inner.clear();
                    let seed = MessageSeed {
                        codec: self.codec,
                        desc: &desc,
                        out: &mut inner,
                    };
                    if seq.next_element_seed(seed)?.is_none() {
                        break;
                    }
                    put_delimited(number, &inner, self.out);
                }
            }
            kind => {
                while let Some(json) = seq.next_element::<Json>()? {
                    put_value(self.codec, number, &kind, &json, self.out)?;
                }
            }
        }
        Ok(true)
    }
}

/// A string field, written without an owned copy.
struct StringField<'a> {
    number: u32,
    out: &'a mut Vec<u8>,
}

impl Visitor<'_> for StringField<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<bool, E> {
        put_delimited(self.number, text.as_bytes(), self.out);
        Ok(true)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// A length-delimited field: an embedded message's bytes or a string's.
fn put_delimited(number: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// One value read by the codec's own rules, written as field `number`.
fn put_value<E: de::Error>(
    codec: &JsonCodec,
    number: u32,
    kind: &Kind,
    json: &Json,
    out: &mut Vec<u8>,
) -> Result<(), E> {
    let value = codec.decode_value(kind, json, "").map_err(|_| give_up())?;
    match (kind, &value) {
        (_, Value::Bool(v)) => encoding::bool::encode(number, v, out),
        (Kind::Sint32, Value::I32(v)) => encoding::sint32::encode(number, v, out),
        (Kind::Sfixed32, Value::I32(v)) => encoding::sfixed32::encode(number, v, out),
        (_, Value::I32(v) | Value::EnumNumber(v)) => encoding::int32::encode(number, v, out),
        (Kind::Sint64, Value::I64(v)) => encoding::sint64::encode(number, v, out),
        (Kind::Sfixed64, Value::I64(v)) => encoding::sfixed64::encode(number, v, out),
        (_, Value::I64(v)) => encoding::int64::encode(number, v, out),
        (Kind::Fixed32, Value::U32(v)) => encoding::fixed32::encode(number, v, out),
        (_, Value::U32(v)) => encoding::uint32::encode(number, v, out),
        (Kind::Fixed64, Value::U64(v)) => encoding::fixed64::encode(number, v, out),
        (_, Value::U64(v)) => encoding::uint64::encode(number, v, out),
        (_, Value::F32(v)) => encoding::float::encode(number, v, out),
        (_, Value::F64(v)) => encoding::double::encode(number, v, out),
        (_, Value::String(v)) => encoding::string::encode(number, v, out),
        (_, Value::Bytes(v)) => encoding::bytes::encode(number, v, out),
        (_, Value::Message(v)) => encoding::message::encode(number, v, out),
        (_, Value::List(_) | Value::Map(_)) => return Err(give_up()),
    }
    Ok(())
}

/// A reply message's bytes, serializable as its JSON (see the module doc).
pub struct Reply<'a> {
    pub codec: &'a JsonCodec,
    pub desc: &'a MessageDescriptor,
    pub bytes: &'a [u8],
}

/// The range prost-reflect writes (years 1 to 9999); outside it, it fails.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// One field occurrence on the wire.
enum Raw<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Delimited(&'a [u8]),
}

/// The error that sends a reply to be decoded; its text is never shown.
fn decode_instead<E: ser::Error>() -> E {
    E::custom("left to decoding")
}

impl Serialize for Reply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let codec = self.codec;
        if self.desc.full_name() == "google.protobuf.Timestamp" {
            // As prost-reflect writes it, without a DynamicMessage.
            let timestamp = prost_types::Timestamp::decode(self.bytes)
                .map_err(|_| decode_instead::<S::Error>())?;
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds) {
                return Err(decode_instead());
            }
            return serializer.collect_str(&timestamp);
        }
        if is_well_known(self.desc) {
            let message = DynamicMessage::decode(self.desc.clone(), self.bytes)
                .map_err(|_| decode_instead::<S::Error>())?;
            return codec.encoded(&message).serialize(serializer);
        }
        let raw = scan(self.bytes).ok_or_else(decode_instead::<S::Error>)?;
        let mut object = serializer.serialize_map(None)?;
        for field in self.desc.fields() {
            let kind = field.kind();
            let mut found = raw
                .iter()
                .filter(|(number, _)| *number == field.number())
                .map(|(_, raw)| raw);
            if field.is_map() {
                if found.next().is_some() {
                    return Err(decode_instead());
                }
                object.serialize_entry(field.json_name(), &Empty {})?;
                continue;
            }
            if field.is_list() {
                let items =
                    list_items(codec, &kind, found).ok_or_else(decode_instead::<S::Error>)?;
                object.serialize_entry(field.json_name(), &items)?;
                continue;
            }
            let Some(last) = found.next_back() else {
                if !field.supports_presence() {
                    let value = field.default_value();
                    object.serialize_entry(field.json_name(), &encoded(codec, &kind, &value))?;
                } else if codec.is_nullable(&field) {
                    object.serialize_entry(field.json_name(), &())?;
                }
                continue;
            };
            match (&kind, last) {
                (Kind::Message(desc), Raw::Delimited(bytes)) => {
                    if found.next().is_some() {
                        return Err(decode_instead()); // sent twice: the parts merge
                    }
                    object.serialize_entry(field.json_name(), &Reply { codec, desc, bytes })?;
                }
                (Kind::String, Raw::Delimited(bytes)) => {
                    let text =
                        std::str::from_utf8(bytes).map_err(|_| decode_instead::<S::Error>())?;
                    object.serialize_entry(field.json_name(), text)?;
                }
                (kind, raw) => {
                    let value = scalar(kind, raw).ok_or_else(decode_instead::<S::Error>)?;
                    object.serialize_entry(field.json_name(), &encoded(codec, kind, &value))?;
                }
            }
        }
        object.end()
    }
}

/// An empty map field: `{}`.
#[derive(Serialize)]
struct Empty {}

fn encoded<'a>(codec: &'a JsonCodec, kind: &'a Kind, value: &'a Value) -> EncodedValue<'a> {
    EncodedValue { codec, kind, value }
}

/// One item of a list field.
enum Item<'a> {
    Message(Reply<'a>),
    Scalar(&'a JsonCodec, &'a Kind, Value),
}

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Message(reply) => reply.serialize(serializer),
            Item::Scalar(codec, kind, value) => encoded(codec, kind, value).serialize(serializer),
        }
    }
}

/// The items of a list field from its occurrences, packed or not.
fn list_items<'a>(
    codec: &'a JsonCodec,
    kind: &'a Kind,
    found: impl Iterator<Item = &'a Raw<'a>>,
) -> Option<Vec<Item<'a>>> {
    let mut items = Vec::new();
    for raw in found {
        match (kind, raw) {
            (Kind::Message(desc), Raw::Delimited(bytes)) => {
                items.push(Item::Message(Reply { codec, desc, bytes }));
            }
            (Kind::String | Kind::Bytes | Kind::Message(_), raw) => {
                items.push(Item::Scalar(codec, kind, scalar(kind, raw)?));
            }
            (_, Raw::Delimited(packed)) => {
                let mut packed: &[u8] = packed;
                while !packed.is_empty() {
                    let raw = match kind {
                        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => {
                            Raw::Fixed32(u32::from_le_bytes(take(&mut packed)?))
                        }
                        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => {
                            Raw::Fixed64(u64::from_le_bytes(take(&mut packed)?))
                        }
                        _ => Raw::Varint(decode_varint(&mut packed).ok()?),
                    };
                    items.push(Item::Scalar(codec, kind, scalar(kind, &raw)?));
                }
            }
            (_, raw) => items.push(Item::Scalar(codec, kind, scalar(kind, raw)?)),
        }
    }
    Some(items)
}

/// The field occurrences of one message, in wire order.
fn scan(mut bytes: &[u8]) -> Option<Vec<(u32, Raw<'_>)>> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let (number, wire_type) = decode_key(&mut bytes).ok()?;
        let raw = match wire_type {
            WireType::Varint => Raw::Varint(decode_varint(&mut bytes).ok()?),
            WireType::ThirtyTwoBit => Raw::Fixed32(u32::from_le_bytes(take(&mut bytes)?)),
            WireType::SixtyFourBit => Raw::Fixed64(u64::from_le_bytes(take(&mut bytes)?)),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
                if bytes.len() < len {
                    return None;
                }
                let (head, rest) = bytes.split_at(len);
                bytes = rest;
                Raw::Delimited(head)
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        found.push((number, raw));
    }
    Some(found)
}

/// The next `N` bytes of `bytes` (a fixed-width value), consumed.
fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(*head)
}

/// A scalar field's value as prost decodes it.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn scalar(kind: &Kind, raw: &Raw<'_>) -> Option<Value> {
    Some(match (kind, raw) {
        (Kind::Int32, Raw::Varint(v)) => Value::I32(*v as i32),
        (Kind::Int64, Raw::Varint(v)) => Value::I64(*v as i64),
        (Kind::Uint32, Raw::Varint(v)) => Value::U32(*v as u32),
        (Kind::Uint64, Raw::Varint(v)) => Value::U64(*v),
        (Kind::Sint32, Raw::Varint(v)) => {
            let v = *v as u32;
            Value::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Kind::Sint64, Raw::Varint(v)) => Value::I64(((v >> 1) as i64) ^ -((v & 1) as i64)),
        (Kind::Bool, Raw::Varint(v)) => Value::Bool(*v != 0),
        (Kind::Enum(_), Raw::Varint(v)) => Value::EnumNumber(*v as i32),
        (Kind::Fixed32, Raw::Fixed32(v)) => Value::U32(*v),
        (Kind::Sfixed32, Raw::Fixed32(v)) => Value::I32(*v as i32),
        (Kind::Float, Raw::Fixed32(v)) => Value::F32(f32::from_bits(*v)),
        (Kind::Fixed64, Raw::Fixed64(v)) => Value::U64(*v),
        (Kind::Sfixed64, Raw::Fixed64(v)) => Value::I64(*v as i64),
        (Kind::Double, Raw::Fixed64(v)) => Value::F64(f64::from_bits(*v)),
        (Kind::String, Raw::Delimited(b)) => Value::String(std::str::from_utf8(b).ok()?.to_owned()),
        (Kind::Bytes, Raw::Delimited(b)) => Value::Bytes(Bytes::copy_from_slice(b)),
        (Kind::Message(desc), Raw::Delimited(b)) => {
            Value::Message(DynamicMessage::decode(desc.clone(), *b).ok()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    use super::*;
    use crate::proto;

    fn desc(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
        pool.get_message_by_name(name).unwrap()
    }

    /// What the general way makes of `body`, as the service receives it.
    fn general(codec: &JsonCodec, desc: &MessageDescriptor, body: &str) -> Option<DynamicMessage> {
        let json: Json = serde_json::from_str(body).ok()?;
        let message = codec.decode(desc, &json).ok()?;
        Some(DynamicMessage::decode(desc.clone(), message.encode_to_vec().as_slice()).unwrap())
    }

    /// Checks that the short way either gives up or means what the general
    /// way means; answers whether it took the body.
    fn same_meaning(pool: &DescriptorPool, name: &str, body: &str) -> bool {
        let codec = JsonCodec::new(pool);
        let desc = desc(pool, name);
        let Some(bytes) = encode(&codec, &desc, body.as_bytes()) else {
            return false;
        };
        let short = DynamicMessage::decode(desc.clone(), bytes.as_slice())
            .unwrap_or_else(|err| panic!("{body}: undecodable bytes: {err}"));
        let general = general(&codec, &desc, body)
            .unwrap_or_else(|| panic!("{body}: taken here, refused the general way"));
        assert_eq!(codec.encode(&short), codec.encode(&general), "{body}");
        true
    }

    #[test]
    fn metering_bodies_take_the_short_way_with_the_same_meaning() {
        let pool = proto::pool();
        let taken = [
            (
                "tenlyr.v1.TrackRequest",
                r#"{"metric":"api_call","value":1}"#,
            ),
            (
                "tenlyr.v1.TrackRequest",
                r#"{"metric":"USAGE_METRIC_STORAGE_GB","value":0.5,"endpoint":"/v1/x","idempotencyKey":"k-1",
                    "timestamp":"2026-11-23T10:00:00.5+01:00","statusCode":503}"#,
            ),
            (
                "tenlyr.v1.TrackRequest",
                r#"{"metric":3,"value":"2","endpoint":null,"idempotency_key":"k\u00e9\n","status_code":"404"}"#,
            ),
            ("tenlyr.v1.TrackRequest", r#"{"value":0,"metric":"seats"}"#),
            ("tenlyr.v1.TrackRequest", "  {}  "),
            (
                "tenlyr.v1.TrackBatchRequest",
                r#"{"events":[{"metric":"api_call","value":1,"idempotencyKey":"a"},{},
                    {"metric":"compute","value":1e3,"timestamp":null}]}"#,
            ),
            ("tenlyr.v1.TrackBatchRequest", r#"{"events":[]}"#),
            ("tenlyr.v1.TrackBatchRequest", r#"{"events":null}"#),
        ];
        for (name, body) in taken {
            assert!(same_meaning(pool, name, body), "{body} should be taken");
        }
    }

    #[test]
    fn anything_the_codec_might_decide_differently_goes_the_general_way() {
        let pool = proto::pool();
        let left = [
            (
                "tenlyr.v1.TrackRequest",
                r#"{"metric":"api_call","value":1"#,
            ),
            ("tenlyr.v1.TrackRequest", r#"{"metric":"api_call"} x"#),
            ("tenlyr.v1.TrackRequest", ""),
            ("tenlyr.v1.TrackRequest", "[1]"),
            ("tenlyr.v1.TrackRequest", r#"{"metric":"gold","value":1}"#),
            (
                "tenlyr.v1.TrackRequest",
                r#"{"metric":"api_call","value":"x"}"#,
            ),
            ("tenlyr.v1.TrackRequest", r#"{"value":1,"value":2}"#),
            (
                "tenlyr.v1.TrackRequest",
                r#"{"idempotencyKey":"a","idempotency_key":"b"}"#,
            ),
            ("tenlyr.v1.TrackRequest", r#"{"nope":1}"#),
            ("tenlyr.v1.TrackRequest", r#"{"endpoint":5}"#),
            ("tenlyr.v1.TrackRequest", r#"{"statusCode":1.5}"#),
            ("tenlyr.v1.TrackRequest", r#"{"statusCode":9999999999}"#),
            ("tenlyr.v1.TrackRequest", r#"{"timestamp":"yesterday"}"#),
            ("tenlyr.v1.TrackBatchRequest", r#"{"events":[null]}"#),
            ("tenlyr.v1.TrackBatchRequest", r#"{"events":[{"value":-}]}"#),
            ("tenlyr.v1.TrackBatchRequest", r#"{"events":{"value":1}}"#),
            (
                "tenlyr.v1.TrackBatchRequest",
                r#"{"events":[{"metric":"x"}]}"#,
            ),
            (
                "tenlyr.v1.TrackBatchRequest",
                r#"{"events":[],"events":[]}"#,
            ),
        ];
        for (name, body) in left {
            assert!(!same_meaning(pool, name, body), "{body} should be left");
        }
    }

    /// Checks that a reply written from its bytes is the codec's text of
    /// the decoded message; answers whether it was written.
    fn same_reply(pool: &DescriptorPool, name: &str, bytes: &[u8]) -> bool {
        let codec = JsonCodec::new(pool);
        let desc = desc(pool, name);
        let Ok(short) = serde_json::to_string(&Reply {
            codec: &codec,
            desc: &desc,
            bytes,
        }) else {
            return false;
        };
        let decoded = DynamicMessage::decode(desc.clone(), bytes).unwrap();
        let general = serde_json::to_string(&codec.encoded(&decoded)).unwrap();
        assert_eq!(short, general);
        true
    }

    /// `json` read the general way, encoded.
    fn bytes(pool: &DescriptorPool, name: &str, json: &str) -> Vec<u8> {
        let codec = JsonCodec::new(pool);
        general(&codec, &desc(pool, name), json)
            .unwrap()
            .encode_to_vec()
    }

    #[test]
    fn replies_written_from_bytes_read_as_decoded() {
        let pool = proto::pool();
        let batch = "tenlyr.v1.TrackBatchResponse";
        let replies = [
            (
                batch,
                r#"{"results":[{"index":0,"outcome":"accepted","eventId":"019a"},
                    {"index":1,"outcome":"duplicate","eventId":"0199"},
                    {"index":2,"outcome":"rejected","reason":"value must be at least 1","field":"events[2].value"}],
                    "accepted":1,"duplicates":1,"rejected":1}"#,
            ),
            (batch, "{}"),
            (
                "tenlyr.v1.UsageEvent",
                r#"{"id":"e","tenantId":"t","metric":"storage_gb","value":0.25,"endpoint":"/x",
                    "timestamp":"2026-11-23T10:00:00.123Z","statusCode":0,"idempotencyKey":""}"#,
            ),
            (
                "tenlyr.v1.UsageEvent",
                r#"{"id":"e","metric":"api_call","value":1}"#,
            ),
            (
                "tenlyr.v1.TenantUsageMetric",
                r#"{"tenantId":"t","apiCalls":"9007199254740993","storageGb":1.5,"seats":"-1",
                    "periodStart":"2026-10-31T23:00:00.000001Z","periodEnd":"0001-01-01T00:00:00.123456789Z",
                    "apiCallLimit":"0"}"#,
            ),
        ];
        for (name, json) in replies {
            assert!(same_reply(pool, name, &bytes(pool, name, json)), "{json}");
        }
    }

    #[test]
    fn replies_of_every_kind_and_encoding_read_as_decoded() {
        let pool = proto::testing::pool();
        let book = "tenlyr.testing.v1.Book";
        let full = bytes(
            pool,
            book,
            r#"{"shelf":"s1","title":"Dune","pages":"-412","genre":"poetry","tags":["a","b"],
                "author":{"name":"Frank","bornYear":"1920"},"publishedAt":"2026-03-14T10:00:00Z",
                "subtitle":"","extra":{"a":[1,null]},"edition":0,"cover":"AAE=","price":"-Infinity",
                "inPrint":true,"copies":4294967295}"#,
        );
        assert!(same_reply(pool, book, &full));
        assert!(same_reply(pool, book, &[]), "every field unset");
        let list = "tenlyr.testing.v1.ListBooksRequest";
        let packed = bytes(
            pool,
            list,
            r#"{"ids":["1","-2","300"],"genres":[1,2],"limit":-5}"#,
        );
        assert!(same_reply(pool, list, &packed), "packed lists");
        let mut unpacked = Vec::new();
        for id in [7_i64, -8] {
            encoding::int64::encode(5, &id, &mut unpacked);
        }
        let mut twice = [packed.clone(), unpacked, packed].concat();
        assert!(
            same_reply(pool, list, &twice),
            "lists concatenate, scalars: last wins"
        );
        twice.push(0x28); // a key with no value
        assert!(!same_reply_or_undecodable(pool, list, &twice));

        let author = bytes(pool, book, r#"{"author":{"name":"F"}}"#);
        let merged = [author.clone(), author].concat();
        assert!(
            !same_reply(pool, book, &merged),
            "a message sent twice merges"
        );
        let rated = bytes(pool, book, r#"{"ratings":{"alice":5}}"#);
        assert!(!same_reply(pool, book, &rated), "maps are decoded");
    }

    /// `same_reply` for bytes that may not decode at all.
    fn same_reply_or_undecodable(pool: &DescriptorPool, name: &str, bytes: &[u8]) -> bool {
        if DynamicMessage::decode(desc(pool, name), bytes).is_err() {
            let codec = JsonCodec::new(pool);
            let desc = desc(pool, name);
            let reply = Reply {
                codec: &codec,
                desc: &desc,
                bytes,
            };
            return serde_json::to_string(&reply).is_ok();
        }
        same_reply(pool, name, bytes)
    }

    #[test]
    fn every_kind_of_field_means_the_same() {
        let pool = proto::testing::pool();
        let book = "tenlyr.testing.v1.Book";
        let taken = [
            r#"{"shelf":"s1","id":"b1","title":"Dune","pages":412,"genre":"science_fiction",
                "tags":["classic","sf"],"author":{"name":"Frank","bornYear":"1920"},
                "publishedAt":"2026-03-14T10:00:00Z","returnedAt":null,"subtitle":"",
                "extra":{"a":[1,null,{"b":true}]},"edition":2,"cover":"AAE=","price":-9.5,
                "inPrint":true,"copies":3}"#,
            r#"{"pages":"-7","genre":2,"author":{},"tags":[],"copies":"12","price":"NaN","edition":null}"#,
            r#"{"pages":1e3,"cover":"_-8=","in_print":false,"published_at":null,"author":null}"#,
            r#"{"genre":"GENRE_POETRY","price":"Infinity","tags":null}"#,
        ];
        for body in taken {
            assert!(same_meaning(pool, book, body), "{body} should be taken");
        }
        let left = [
            r#"{"ratings":{"alice":5}}"#,
            r#"{"copies":-1}"#,
            r#"{"pages":1.5}"#,
            r#"{"author":{"bornYear":true}}"#,
            r#"{"author":"Frank"}"#,
            r#"{"tags":["a",3]}"#,
            r#"{"tags":"a"}"#,
            r#"{"author":{"name":"a"},"author":{"bornYear":"1"}}"#,
        ];
        for body in left {
            assert!(!same_meaning(pool, book, body), "{body} should be left");
        }
    }
}
