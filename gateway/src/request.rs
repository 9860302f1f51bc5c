//! A client's text frame decoded into a request. Each envelope field is checked on its own, so a
//! wrong type gets a clear error (answering the `requestId` when that much was readable), never
//! a dropped connection; nothing here does I/O, which is what the property test and the fuzz
//! target (`gateway/fuzz`) drive.

use chat_proto::client;

use crate::error::RequestError;

/// Longest event name echoed back in an error.
const MAX_ECHOED_EVENT_CHARS: usize = 64;

/// A decoded request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The `requestId`, to answer.
    pub request_id: Option<String>,
    /// The event name.
    pub event: String,
    /// The event's data, raw JSON (`{}` when absent).
    pub data: &'a str,
}

impl Request<'_> {
    /// The event name as an error may echo it (at most 64 characters).
    pub fn echoed_event(&self) -> String {
        self.event.chars().take(MAX_ECHOED_EVENT_CHARS).collect()
    }
}

/// A frame refused before it became a request: the error, and what of the envelope to echo.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub error: RequestError,
    pub request_id: Option<String>,
    pub event: Option<String>,
}

impl Refusal {
    /// The `error` frame.
    pub fn to_frame(&self) -> String {
        self.error
            .to_frame(self.request_id.as_deref(), self.event.as_deref())
    }
}

/// Decodes a text frame of at most `max_bytes`.
pub fn decode(text: &str, max_bytes: usize) -> Result<Request<'_>, Refusal> {
    let refuse = |error, request_id: Option<&String>, event: Option<String>| Refusal {
        error,
        request_id: request_id.cloned(),
        event,
    };
    if text.len() > max_bytes {
        let error = RequestError::protocol(format!("message larger than {max_bytes} bytes"));
        return Err(refuse(error, None, None));
    }
    let Ok(envelope) = serde_json::from_str::<client::ClientFrame<'_>>(text) else {
        let error = RequestError::protocol("not a JSON object envelope");
        return Err(refuse(error, None, None));
    };
    let request_id = match envelope
        .request_id
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        None => None,
        Some(Ok(id)) if id.chars().count() <= client::MAX_REQUEST_ID_CHARS => Some(id),
        Some(_) => {
            let error =
                RequestError::protocol("requestId must be a string of at most 64 characters");
            return Err(refuse(error, None, None));
        }
    };
    let Some(event) = envelope
        .event
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    else {
        let error = RequestError::protocol("event must be a string");
        return Err(refuse(error, request_id.as_ref(), None));
    };
    let request = Request {
        request_id,
        event,
        data: envelope.data.map_or("{}", |raw| raw.get()),
    };
    if let Some(version) = envelope.version
        && serde_json::from_str::<&str>(version.get()).ok() != Some(client::VERSION)
    {
        let error = RequestError::protocol("unsupported version; this server speaks version \"1\"");
        let event = Some(request.echoed_event());
        return Err(refuse(error, request.request_id.as_ref(), event));
    }
    Ok(request)
}

/// Parses an event's data.
pub fn parse<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, RequestError> {
    serde_json::from_str(data).map_err(|e| RequestError::invalid(format!("invalid data: {e}")))
}
