//! The gateway's one error type: every failure a client can see maps onto a
//! protocol error code here, and onto an HTTP status for the API.

use http::StatusCode;
use roomcast_broker::BrokerError;
use roomcast_protocol::ErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct NodeError {
    pub code: ErrorCode,
    pub message: String,
}

impl NodeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        NodeError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The HTTP status the API answers with for this error.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::NotJoined => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<BrokerError> for NodeError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(why) => NodeError::new(
                ErrorCode::Unavailable,
                format!("message store unavailable: {why}"),
            ),
        }
    }
}
