//! OpenAPI entries for the server push routes that `crate::s2c::router`
//! serves (`/api/v1/s2c/...`, X-Api-Key); documentation only, no routing.
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::accounts::UserJson;

/// `POST /api/v1/s2c/messages`: a business server's push to users.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct S2cPush {
    /// Recipient user ids (distinct; at most 1000).
    pub to: Vec<i64>,
    /// 1-64 bytes without control characters, unique per key: makes the push idempotent.
    pub client_msg_id: String,
    /// Below 0xF000; default 1.
    pub content_type: u32,
    pub body: String,
}

/// The acknowledgement of a stored push.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct S2cAck {
    pub msg_id: i64,
    pub sent_at_ms: u64,
    pub duplicate: bool,
}

fn json_ref(name: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(name))))
        .build()
}

fn error(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_ref("ErrorBody"))
        .build()
}

/// Adds the server push routes, their schemas and the `api_key` scheme.
pub fn add_server_api(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Api-Key",
            "a server API key (--server-api-keys)",
        ))),
    );
    components
        .schemas
        .insert("S2cPush".into(), <S2cPush as PartialSchema>::schema());
    components
        .schemas
        .insert("S2cAck".into(), <S2cAck as PartialSchema>::schema());
    let security = || SecurityRequirement::new("api_key", Vec::<String>::new());
    let push = OperationBuilder::new()
        .tag("server")
        .summary(Some("Push a message to users (server API key)"))
        .security(security())
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json_ref("S2cPush"))
                .required(Some(Required::True))
                .build(),
        ))
        .response(
            "201",
            ResponseBuilder::new()
                .description("stored")
                .content("application/json", json_ref("S2cAck"))
                .build(),
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("duplicate of an earlier push")
                .content("application/json", json_ref("S2cAck"))
                .build(),
        )
        .response("400", error("BAD_REQUEST"))
        .response("401", error("UNAUTHENTICATED: missing or wrong key"))
        .response("403", error("FORBIDDEN: server push is disabled"))
        .build();
    doc.paths
        .add_path_operation("/api/v1/s2c/messages", vec![HttpMethod::Post], push);
    let lookup = OperationBuilder::new()
        .tag("server")
        .summary(Some("Look a user up by name (server API key)"))
        .security(security())
        .parameter(
            ParameterBuilder::new()
                .name("username")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(String::schema())),
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("the user")
                .content("application/json", json_ref(&UserJson::name()))
                .build(),
        )
        .response("404", error("UNKNOWN_USER"))
        .build();
    doc.paths.add_path_operation(
        "/api/v1/s2c/users/{username}",
        vec![HttpMethod::Get],
        lookup,
    );
}
