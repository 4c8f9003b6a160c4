//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, each with
//! the HTTP status it is sent with.

use serde::Serialize;

/// An error the API answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status: 400 bad request, 401 bad key, 404 unknown model or path, 413 too
    /// large, 503 no capable peer or overloaded, 500 a failure of ours.
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`,
    /// `not_found_error`, `server_error`, `overloaded_error`.
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    /// 400: a parameter is missing, of the wrong type or out of range.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param.to_owned()), code: None }
    }

    /// 400 for the request as a whole (not JSON, not an object).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: None, code: None }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { status: 401, message: message.into(), kind: "authentication_error", param: None, code: Some("invalid_api_key") }
    }

    pub fn model_not_found(message: impl Into<String>) -> Self {
        Self { status: 404, message: message.into(), kind: "invalid_request_error", param: Some("model".into()), code: Some("model_not_found") }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: 404, message: message.into(), kind: "not_found_error", param: None, code: None }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self { status: 413, message: message.into(), kind: "invalid_request_error", param: None, code: Some("request_too_large") }
    }

    pub fn context_length(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: Some("messages".into()), code: Some("context_length_exceeded") }
    }

    /// 503: no peer can serve it now (none hosts the model, all are busy or gone).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: 503, message: message.into(), kind: "overloaded_error", param: None, code: Some("unavailable") }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self { status: 503, message: message.into(), kind: "overloaded_error", param: None, code: Some("overloaded") }
    }

    /// 500: something failed on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> String {
        let body = Body { error: Inner { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code } };
        serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_openais_four_fields() {
        let e = ApiError::invalid("n", "only n = 1 is supported");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v, serde_json::json!({"error": {"message": "only n = 1 is supported", "type": "invalid_request_error", "param": "n", "code": null}}));
        assert_eq!(e.status, 400);
        let v: serde_json::Value = serde_json::from_str(&ApiError::model_not_found("no").body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
    }
}
