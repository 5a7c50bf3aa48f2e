//! gRPC, gRPC-Web and REST on one port reach the same services with the
//! same results; reflection and health serve operators.

use prost::Message as _;
use tenlyr::proto::v1::{ListTenantsRequest, tenant_service_client::TenantServiceClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::{TestApp, grpc_web, json, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rpc_three_protocols_same_outcome() {
    let app = TestApp::spawn().await;
    let request = ListTenantsRequest {
        limit: 5,
        cursor: String::new(),
    };
    let path = "/tenlyr.v1.TenantService/ListTenants";

    let body =
        serde_json::json!({"name": "Acme Corp", "ownerEmail": "ops@acme.test", "plan": "growth"});
    let (status, created) = json(
        app.admin(reqwest::Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{created}");

    // Authorized: the same tenant, the same fields, on all three.
    let grpc = TenantServiceClient::new(app.channel().await)
        .list_tenants(with_key(request.clone(), &app.admin_key))
        .await
        .unwrap()
        .into_inner();
    let web = grpc_web(&app, path, Some(&app.admin_key), &request.encode_to_vec()).await;
    assert_eq!(web.code, tonic::Code::Ok);
    let web = tenlyr::proto::v1::ListTenantsResponse::decode(web.body.unwrap()).unwrap();
    let (status, rest) = json(
        app.admin(reqwest::Method::GET, "/api/v1/tenants?limit=5")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(grpc, web);
    assert_eq!(grpc.data.len(), 1);
    assert_eq!(rest["data"][0]["id"], grpc.data[0].id.as_str());
    assert_eq!(rest["data"][0]["plan"], "growth");
    assert_eq!(
        rest["data"][0]["apiKeyPrefix"],
        grpc.data[0].api_key_prefix.as_str()
    );
    assert_eq!(rest["nextCursor"], serde_json::Value::Null);
    assert_eq!(rest["data"][0], created["tenant"]);

    // An unknown migration: NOT_FOUND everywhere, same message.
    let id = "51fad484-7f82-4c97-a3e1-b0c29d4f8201";
    let (status, rest) = json(
        app.admin(
            reqwest::Method::GET,
            &format!("/api/v1/isolation/migrations/{id}"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let web = grpc_web(
        &app,
        "/tenlyr.v1.IsolationService/GetMigration",
        Some(&app.admin_key),
        &tenlyr::proto::v1::GetMigrationRequest { id: id.into() }.encode_to_vec(),
    )
    .await;
    assert_eq!((status, web.code), (404, tonic::Code::NotFound));
    assert_eq!(rest["message"], web.message.as_str());

    // Unauthenticated: rejected by the same layer, same message.
    let grpc = TenantServiceClient::new(app.channel().await)
        .list_tenants(request.clone())
        .await
        .unwrap_err();
    let web = grpc_web(&app, path, None, &request.encode_to_vec()).await;
    let (status, rest) = json(
        app.http
            .get(app.url("/api/v1/tenants"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (grpc.code(), web.code, status),
        (
            tonic::Code::Unauthenticated,
            tonic::Code::Unauthenticated,
            401
        )
    );
    assert_eq!(grpc.message(), web.message);
    assert_eq!(rest["message"], grpc.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_serves_browsers_with_cors() {
    let app = TestApp::spawn().await;
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url("/tenlyr.v1.TenantService/ListTenants"),
        )
        .header("origin", "https://backoffice.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let exposed = preflight
        .headers()
        .get("access-control-expose-headers")
        .map(|v| v.to_str().unwrap().to_owned());
    let response = app
        .http
        .post(app.url("/grpc.health.v1.Health/Check"))
        .header("origin", "https://backoffice.example")
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    let exposed = exposed.or_else(|| {
        response
            .headers()
            .get("access-control-expose-headers")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    assert!(exposed.unwrap_or_default().contains("grpc-status"));
    let web = grpc_web(&app, "/grpc.health.v1.Health/Check", None, &[]).await;
    assert_eq!(web.code, tonic::Code::Ok);
    // HealthCheckResponse { status: SERVING (1) }
    assert_eq!(web.body.unwrap().as_ref(), &[0x08, 0x01]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_in_both_versions() {
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let pool = tenlyr::proto::pool();
    for service in pool.services().filter(|s| s.package_name() == "tenlyr.v1") {
        assert!(
            names.contains(&service.full_name().to_owned()),
            "{} missing from {names:?}",
            service.full_name()
        );
    }
    for name in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.contains(&name.to_owned()),
            "{name} missing from {names:?}"
        );
    }

    // `describe`: the file defining a method, with its HTTP annotation.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "tenlyr.v1.TenantService.GetTenant".into(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
        panic!("unexpected reflection reply")
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.name(), "tenlyr/v1/tenant.proto");

    // v1alpha, which older grpcurl versions use.
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            app.channel().await,
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter([item])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes() {
    let app = TestApp::spawn().await;
    let (status, body) = json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = json(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    // Postgres gone: not ready, documented 503 body; still alive.
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::base_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {} WITH (FORCE)",
        app.db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let (status, body) = json(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "Service Unavailable");
    let (status, _) = json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    // A keyed request now fails with 503 (database unavailable), not 500.
    let (status, body) = json(
        app.admin(reqwest::Method::GET, "/api/v1/tenants")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
}

use sqlx::Connection as _;
