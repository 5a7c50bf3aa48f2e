//! AdminKeyService: proto ⇄ `service::admin_keys`.

use tonic::{Request, Response, Status};

use super::{actor, parse_id, timestamp};
use crate::{app::AppState, proto::v1, storage::entities::admin_key};

#[derive(Clone)]
pub struct AdminKeyApi {
    pub state: AppState,
}

fn to_proto(k: &admin_key::Model) -> v1::AdminKey {
    v1::AdminKey {
        id: k.id.to_string(),
        label: k.label.clone(),
        prefix: k.prefix.clone(),
        created_at: Some(timestamp(k.created_at)),
        last_used_at: k.last_used_at.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl v1::admin_key_service_server::AdminKeyService for AdminKeyApi {
    async fn create_admin_key(
        &self,
        request: Request<v1::CreateAdminKeyRequest>,
    ) -> Result<Response<v1::CreateAdminKeyResponse>, Status> {
        let actor = actor(&request)?;
        let (key, api_key) = self
            .state
            .admin_keys
            .create(&actor, &request.get_ref().label)
            .await?;
        Ok(Response::new(v1::CreateAdminKeyResponse {
            key: Some(to_proto(&key)),
            api_key,
        }))
    }

    async fn list_admin_keys(
        &self,
        request: Request<v1::ListAdminKeysRequest>,
    ) -> Result<Response<v1::ListAdminKeysResponse>, Status> {
        let actor = actor(&request)?;
        let keys = self.state.admin_keys.list(&actor).await?;
        Ok(Response::new(v1::ListAdminKeysResponse {
            data: keys.iter().map(to_proto).collect(),
        }))
    }

    async fn revoke_admin_key(
        &self,
        request: Request<v1::RevokeAdminKeyRequest>,
    ) -> Result<Response<v1::AdminKey>, Status> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(to_proto(
            &self.state.admin_keys.revoke(&actor, id).await?,
        )))
    }
}
