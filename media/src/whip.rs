//! The WHIP exchange (RFC 9725): one `POST` of the offer, a `201 Created` with the answer
//! and the session's `Location`; `DELETE` on that location ends the session.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// Why the exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    /// The URL is not `http://host:port/path`.
    #[error("{0} is not an http:// URL with a host and port (put HTTPS in front of the hub with a proxy on the van)")]
    Url(String),
    /// The connection failed.
    #[error("could not reach the hub at {0}: {1}")]
    Connect(String, String),
    /// The hub answered something else than 201 with an SDP answer.
    #[error("the hub refused the call ({status}): {body}")]
    Refused {
        /// The status.
        status: u16,
        /// What it said.
        body: String,
    },
}

/// A session the hub created.
#[derive(Debug, Clone)]
pub struct Session {
    /// The SDP answer.
    pub answer: String,
    /// The session resource (absolute path on the hub).
    pub location: String,
}

fn split(url: &str) -> Result<(String, String), WhipError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| WhipError::Url(url.into()))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    if host.is_empty() || !host.contains(':') {
        return Err(WhipError::Url(url.into()));
    }
    Ok((host.to_owned(), path))
}

async fn request(
    host: &str,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> Result<(u16, Option<String>, String), WhipError> {
    let stream =
        tokio::net::TcpStream::connect(host).await.map_err(|e| WhipError::Connect(host.into(), e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| WhipError::Connect(host.into(), e.to_string()))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/sdp");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| WhipError::Connect(host.into(), e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| WhipError::Connect(host.into(), e.to_string()))?;
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.map_err(|e| WhipError::Connect(host.into(), e.to_string()))?;
    Ok((status, location, String::from_utf8_lossy(&bytes.to_bytes()).into_owned()))
}

/// Posts `offer` to the WHIP endpoint `url` with a bearer token.
pub async fn offer(url: &str, token: &str, offer: String) -> Result<Session, WhipError> {
    let (host, path) = split(url)?;
    let (status, location, body) = request(&host, hyper::Method::POST, &path, token, Some(offer)).await?;
    match (status, location) {
        (201, Some(location)) => Ok(Session { answer: body, location }),
        (status, _) => Err(WhipError::Refused { status, body: body.chars().take(500).collect() }),
    }
}

/// Ends the session at `location` (a path on the hub of `url`).
pub async fn end(url: &str, token: &str, location: &str) -> Result<(), WhipError> {
    let (host, _) = split(url)?;
    let (status, _, body) = request(&host, hyper::Method::DELETE, location, token, None).await?;
    if status / 100 == 2 { Ok(()) } else { Err(WhipError::Refused { status, body }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        let (h, p) = split("http://127.0.0.1:8080/api/v1/calls/x/whip").unwrap();
        assert_eq!((h.as_str(), p.as_str()), ("127.0.0.1:8080", "/api/v1/calls/x/whip"));
        assert!(split("https://hub/x").is_err());
        assert!(split("http:///x").is_err());
    }
}
