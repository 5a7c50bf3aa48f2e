//! The short way from a JSON request body to protobuf bytes.
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

use std::fmt;

use prost::encoding::{self, WireType, encode_key, encode_varint};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, Value};
use serde::{
    Deserialize as _,
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value as Json;

use super::json::{JsonCodec, is_well_known};

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
        self.0
            .get_field_by_json_name(key)
            .or_else(|| self.0.get_field_by_name(key))
            .ok_or_else(give_up)
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
        put_nested(self.field.number(), &inner, self.out);
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
                    put_nested(number, &inner, self.out);
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
        encode_key(self.number, WireType::LengthDelimited, self.out);
        encode_varint(text.len() as u64, self.out);
        self.out.extend_from_slice(text.as_bytes());
        Ok(true)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

fn is_json_value(kind: &Kind) -> bool {
    matches!(kind, Kind::Message(m) if m.full_name() == "google.protobuf.Value")
}

fn put_nested(number: u32, inner: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(inner.len() as u64, out);
    out.extend_from_slice(inner);
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
