//! The OpenAI API's wire types: request bodies ([`request`]), responses and stream chunks
//! ([`response`]), and errors ([`error`]).

pub mod error;
pub mod request;
pub mod response;

pub use error::ApiError;
pub use request::{ChatRequest, CommonFields, CompletionRequest, Prompt, RequestLimits, Sampling};
pub use response::{finish_reason_name, Usage};
