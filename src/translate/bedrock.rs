//! OpenAI chat completions and Anthropic messages ↔ AWS Bedrock's Converse
//! API, both directions, JSON and streams.
//!
//! - [`request`]: a client's body → a Converse request (messages of
//!   `text` / `image` / `toolUse` / `toolResult` blocks, `system`,
//!   `inferenceConfig`, `toolConfig`); an unsupported parameter is a 400
//!   naming it, unless the route drops them.
//! - [`response`]: a Converse response → an Anthropic message or an OpenAI
//!   completion (`stopReason`, `usage` with its cache counts).
//! - [`stream`]: ConverseStream events → the client's stream, event by event.

pub mod request;
pub mod response;
pub mod stream;

/// The API name in errors about parameters it lacks.
pub const API: &str = "AWS Bedrock Converse";

#[cfg(test)]
mod tests;
