//! A small HTTP/1.1 client for OpenAI-compatible endpoints: JSON requests, and SSE streams
//! read event by event as they arrive (for time to first token and inter-token latency).
//!
//! One connection per request over hyper's low-level client, so a load generator measures
//! the server, not a pool's scheduling; plain `http://` only (TLS would add a stack of
//! dependencies for a tool that talks to servers on the same network).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a request failed before a response status arrived, or while reading the body.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not `http://host[:port][/prefix]`.
    #[error("bad URL {0:?}: expected http://host[:port][/path]")]
    Url(String),
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The connection timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(String),
}

/// An endpoint's base URL (`http://host:port`, optionally with a path prefix such as `/v1`
/// dropped: routes are given in full) and API key.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    prefix: String,
    api_key: Option<String>,
    connect_timeout: Duration,
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:8000`); a trailing `/v1` is ignored.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self, ClientError> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::Url(base.to_string()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(ClientError::Url(base.to_string()));
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let path = path.trim_end_matches('/');
        let prefix = path
            .strip_suffix("v1")
            .unwrap_or(path)
            .trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(Client {
            authority,
            prefix,
            api_key,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
                .await
                .map_err(|_| ClientError::Timeout(self.connect_timeout))?
                .map_err(|source| ClientError::Connect {
                    addr: self.authority.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority);
        if let Some(ct) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(key) = &self.api_key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    async fn whole(response: hyper::Response<Incoming>) -> Result<Reply, ClientError> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        Self::whole(self.send(Method::GET, path, Bytes::new(), None).await?).await
    }

    /// `POST path` with a raw body (any bytes, for testing bad input).
    pub async fn post_raw(&self, path: &str, body: impl Into<Bytes>) -> Result<Reply, ClientError> {
        let response = self
            .send(Method::POST, path, body.into(), Some("application/json"))
            .await?;
        Self::whole(response).await
    }

    /// `POST path` with a JSON body; the whole response.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Reply, ClientError> {
        self.post_raw(path, body.to_string()).await
    }

    /// `POST path` with a JSON body, read as a server-sent event stream. A non-2xx status
    /// comes back whole as `Err(reply)`.
    pub async fn post_stream(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Result<EventStream, Reply>, ClientError> {
        let response = self
            .send(
                Method::POST,
                path,
                Bytes::from(body.to_string()),
                Some("application/json"),
            )
            .await?;
        if !response.status().is_success() {
            return Ok(Err(Self::whole(response).await?));
        }
        Ok(Ok(EventStream {
            body: response.into_body(),
            buffer: BytesMut::new(),
            done: false,
        }))
    }
}

/// The `data:` payloads of a server-sent event stream, one per event, as they arrive.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    buffer: BytesMut,
    done: bool,
}

impl EventStream {
    /// The next event's data (lines joined with `\n`), `None` at the end of the stream.
    /// `[DONE]` comes back like any other payload.
    pub async fn next(&mut self) -> Option<Result<String, ClientError>> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let raw = self.buffer.split_to(end.0);
                self.buffer.advance(end.1);
                let text = String::from_utf8_lossy(&raw);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Some(Ok(data.join("\n")));
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ClientError::Http(e.to_string())));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Where the first event in `buf` ends: (length of the event, length of the separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let c = Client::new("http://127.0.0.1:8000/v1", None).unwrap();
        assert_eq!((c.authority(), c.prefix.as_str()), ("127.0.0.1:8000", ""));
        let c = Client::new("http://example:9/proxy/v1/", None).unwrap();
        assert_eq!((c.authority(), c.prefix.as_str()), ("example:9", "/proxy"));
        assert_eq!(Client::new("http://h", None).unwrap().authority(), "h:80");
        assert!(Client::new("https://h", None).is_err());
        assert!(Client::new("http://", None).is_err());
    }

    #[test]
    fn event_boundaries() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }
}
