//! AuditService: proto ⇄ service conversions for the audit log
//! (`service::audit`).

use tonic::{Request, Response, Status};

use super::{actor, optional_time, parse_id, record::json_to_struct, timestamp};
use crate::{app::AppState, proto::v1, service::audit::AuditQuery, storage::entities::audit_log};

#[derive(Clone)]
pub struct AuditApi {
    pub state: AppState,
}

fn entry_to_proto(e: audit_log::Model) -> v1::AuditLogEntry {
    let details = match e.details {
        serde_json::Value::Object(map) => Some(json_to_struct(map)),
        _ => None,
    };
    v1::AuditLogEntry {
        id: e.id.to_string(),
        occurred_at: Some(timestamp(e.occurred_at)),
        actor_kind: e.actor_kind,
        actor_key_id: e.actor_key_id.map(|id| id.to_string()),
        tenant_id: e.tenant_id.map(|id| id.to_string()),
        action: e.action,
        target_id: e.target_id.map(|id| id.to_string()),
        details,
        request_id: e.request_id,
        actor_user_id: e.actor_user_id.map(|id| id.to_string()),
    }
}

#[tonic::async_trait]
impl v1::audit_service_server::AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<v1::ListAuditLogsRequest>,
    ) -> Result<Response<v1::ListAuditLogsResponse>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let optional_id =
            |field: &str, raw: &str| (!raw.is_empty()).then(|| parse_id(field, raw)).transpose();
        let query = AuditQuery {
            tenant_id: optional_id("tenantId", &r.tenant_id)?,
            actor_kind: Some(r.actor_kind).filter(|k| !k.is_empty()),
            actor_key_id: optional_id("actorKeyId", &r.actor_key_id)?,
            actor_user_id: optional_id("actorUserId", &r.actor_user_id)?,
            action: Some(r.action).filter(|a| !a.is_empty()),
            from: optional_time("from", r.from)?,
            to: optional_time("to", r.to)?,
            limit: (r.limit != 0).then_some(r.limit.max(0) as u64),
            cursor: Some(r.cursor).filter(|c| !c.is_empty()),
        };
        let page = self.state.audit.list(&actor, query).await?;
        Ok(Response::new(v1::ListAuditLogsResponse {
            data: page.data.into_iter().map(entry_to_proto).collect(),
            next_cursor: page.next_cursor,
        }))
    }
}
