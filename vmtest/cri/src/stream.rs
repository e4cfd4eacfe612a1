//! A client of containerd's streaming server, as `kubectl exec` and `kubectl attach` reach it
//! through the kubelet: the URL that CRI's Exec or Attach returns is opened as a WebSocket with
//! the `v4.channel.k8s.io` protocol, in which every binary message starts with its channel
//! (0 stdin, 1 stdout, 2 stderr, 3 the final status as JSON, 4 terminal size as JSON).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

use crate::{Error, Result};

/// The subprotocol asked for: the channel protocol whose error channel carries a status.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// How the remote process ended, from the status on channel 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `{"status":"Success"}`.
    Success,
    /// A non-zero exit (the `ExitCode` cause).
    Exit(i32),
    /// Any other failure: the status's message.
    Failure(String),
}

/// What the stream has delivered so far.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub ending: Option<Ending>,
    /// The server closed the connection.
    pub closed: bool,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An open exec or attach session.
pub struct Session {
    ws: WebSocket<TcpStream>,
    pub output: Output,
}

fn ws_err(what: &str, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Stream(format!("{what} {url}: {e}"))
}

impl Session {
    /// Opens the session at `url` (the `http://` URL CRI returned).
    pub fn open(url: &str) -> Result<Session> {
        let ws_url = match url.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => return Err(Error::Stream(format!("streaming URL {url:?} is not http:// (TLS streaming is off)"))),
        };
        let host = ws_url["ws://".len()..].split('/').next().unwrap_or_default().to_string();
        let tcp = TcpStream::connect(&host).map_err(|e| ws_err("connecting to", url, e))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| ws_err("configuring", url, e))?;
        let mut req = ws_url.as_str().into_client_request().map_err(|e| ws_err("building a request for", url, e))?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, resp) = tungstenite::client::client(req, tcp).map_err(|e| ws_err("upgrading", url, e))?;
        let chosen = resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        if chosen != PROTOCOL {
            return Err(Error::Stream(format!("{url} chose protocol {chosen:?}, not {PROTOCOL}")));
        }
        Ok(Session { ws, output: Output::default() })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(channel);
        msg.extend_from_slice(data);
        self.ws
            .send(Message::Binary(msg.into()))
            .map_err(|e| Error::Stream(format!("sending on channel {channel}: {e}")))
    }

    /// Sends `data` to the process's stdin.
    pub fn stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data)
    }

    /// Tells the terminal its new size.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.send(RESIZE, format!("{{\"Width\":{width},\"Height\":{height}}}").as_bytes())
    }

    /// Reads messages until `done` says the output is complete, the server closes, or `limit`
    /// passes (an error naming what was read).
    pub fn read_until(&mut self, limit: Duration, mut done: impl FnMut(&Output) -> bool) -> Result<&Output> {
        let deadline = Instant::now() + limit;
        while !done(&self.output) {
            if self.output.closed {
                return Err(Error::Stream(format!("the server closed the stream; so far: {:?}", self.output)));
            }
            if Instant::now() >= deadline {
                return Err(Error::Stream(format!("not within {limit:?}; so far: {:?}", self.output)));
            }
            match self.ws.read() {
                Ok(Message::Binary(data)) => self.take(&data)?,
                Ok(Message::Close(_)) => self.output.closed = true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.output.closed = true
                }
                Err(e) => return Err(Error::Stream(format!("reading: {e}; so far: {:?}", self.output))),
            }
        }
        Ok(&self.output)
    }

    /// Reads until the process's status arrives.
    pub fn wait(&mut self, limit: Duration) -> Result<Ending> {
        self.read_until(limit, |o| o.ending.is_some())?;
        Ok(self.output.ending.clone().unwrap_or(Ending::Failure(String::new())))
    }

    fn take(&mut self, data: &[u8]) -> Result<()> {
        let Some((&channel, payload)) = data.split_first() else {
            return Ok(());
        };
        match channel {
            STDOUT => self.output.stdout.extend_from_slice(payload),
            STDERR => self.output.stderr.extend_from_slice(payload),
            STATUS if !payload.is_empty() => self.output.ending = Some(parse_status(payload)?),
            STATUS => {}
            other => return Err(Error::Stream(format!("a message on channel {other}, which the server never writes"))),
        }
        Ok(())
    }

    /// Closes the session (a client that detaches).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// The v4 status: `{"status":"Success"}`, or a failure whose `details.causes` holds an
/// `ExitCode` cause with the code as its message.
pub fn parse_status(json: &[u8]) -> Result<Ending> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::Stream(format!("status {:?}: {e}", String::from_utf8_lossy(json))))?;
    if v["status"] == "Success" {
        return Ok(Ending::Success);
    }
    let code = v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse::<i32>().ok());
    Ok(match code {
        Some(code) => Ending::Exit(code),
        None => Ending::Failure(v["message"].as_str().unwrap_or_default().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_as_kubectl_reads_them() {
        assert_eq!(parse_status(br#"{"metadata":{},"status":"Success"}"#).unwrap(), Ending::Success);
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(parse_status(failed).unwrap(), Ending::Exit(3));
        let other = br#"{"metadata":{},"status":"Failure","message":"container not found"}"#;
        assert_eq!(parse_status(other).unwrap(), Ending::Failure("container not found".into()));
        assert!(parse_status(b"not json").is_err());
    }
}
