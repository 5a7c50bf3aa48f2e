//! RecordService: proto ⇄ service conversions; the rules are in
//! `service::records` and `domain::record`.

use prost_types::{ListValue, Struct, Value, value::Kind};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{actor, timestamp};
use crate::{
    app::AppState,
    domain::record::{Record, State},
    error::ApiError,
    proto::v1,
    service::records::LockOutcome,
};

type ApiResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct RecordApi {
    pub state: AppState,
}

fn state_to_proto(state: State) -> i32 {
    (match state {
        State::Locked => v1::RecordState::Locked,
        State::Saved => v1::RecordState::Saved,
    }) as i32
}

/// A protobuf `Struct` as the JSON object it stands for.
fn struct_to_json(s: Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect())
        }
    }
}

fn json_to_value(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

pub(super) fn json_to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn record_to_proto(tenant: Uuid, r: Record) -> v1::Record {
    v1::Record {
        key: r.key,
        tenant_id: tenant.to_string(),
        state: state_to_proto(r.state),
        data: match r.data {
            Some(serde_json::Value::Object(map)) => Some(json_to_struct(map)),
            _ => None,
        },
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        lock_expires_at: (r.state == State::Locked).then(|| timestamp(r.locked_until)),
        retained_until: Some(timestamp(r.expires_at)),
    }
}

#[tonic::async_trait]
impl v1::record_service_server::RecordService for RecordApi {
    async fn lock(&self, request: Request<v1::LockRequest>) -> ApiResult<v1::LockResponse> {
        let tenant = actor(&request)?.tenant()?;
        let r = request.into_inner();
        let outcome = self
            .state
            .records
            .lock(tenant, &r.key, r.ttl_seconds, &r.fingerprint)
            .await?;
        let state = state_to_proto(outcome.state());
        Ok(Response::new(match outcome {
            LockOutcome::Locked(record) => v1::LockResponse {
                key: record.key.clone(),
                state,
                lock_token: record.lock_token.to_string(),
                expires_at: Some(timestamp(record.locked_until)),
                record: None,
            },
            LockOutcome::Saved(record) => v1::LockResponse {
                key: record.key.clone(),
                state,
                lock_token: String::new(),
                expires_at: None,
                record: Some(record_to_proto(tenant, record)),
            },
        }))
    }

    async fn save(&self, request: Request<v1::SaveRequest>) -> ApiResult<v1::Record> {
        let tenant = actor(&request)?.tenant()?;
        let r = request.into_inner();
        let data = r
            .data
            .map(struct_to_json)
            .ok_or_else(|| ApiError::bad_field("data", "is required: a JSON object"))?;
        let record = self
            .state
            .records
            .save(tenant, &r.key, &r.lock_token, data)
            .await?;
        Ok(Response::new(record_to_proto(tenant, record)))
    }

    async fn get(&self, request: Request<v1::GetRequest>) -> ApiResult<v1::Record> {
        let tenant = actor(&request)?.tenant()?;
        let record = self
            .state
            .records
            .get(tenant, &request.get_ref().key)
            .await?;
        Ok(Response::new(record_to_proto(tenant, record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_survive_the_struct_round_trip() {
        let json = serde_json::json!({
            "id": "ch_1", "amount": 1250.0, "paid": true, "refund": null,
            "items": [1.0, "two", {"three": 3.0}], "meta": {"a": {"b": []}}
        });
        let serde_json::Value::Object(map) = json.clone() else {
            unreachable!()
        };
        assert_eq!(struct_to_json(json_to_struct(map)), json);
    }
}
