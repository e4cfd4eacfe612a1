//! ttrpc on the wire, for the shim daemon's single-threaded event loop: frames cut from a
//! connection's bytes, responses framed for it, and a blocking unary call (events to containerd).
//!
//! A frame is a 10-byte header (length and stream id as big-endian u32, a type byte, a flags
//! byte) and a protobuf body: `ttrpc.Request` from client to server, `ttrpc.Response` back,
//! under the request's stream id. The message types are the ttrpc crate's; only the transport is
//! the daemon's own, so that it needs no thread per connection.

use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc::{Code, Request, Response, Status};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The header's length.
pub const HEADER_LEN: usize = 10;
/// The largest body either side accepts (ttrpc's limit).
pub const MAX_BODY: usize = 4 << 20;
/// A request frame.
pub const TYPE_REQUEST: u8 = 1;
/// A response frame.
pub const TYPE_RESPONSE: u8 = 2;

/// A failed call: the status code and message the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The gRPC status code.
    pub code: Code,
    /// Why.
    pub message: String,
}

/// A call's result.
pub type RpcResult<T> = Result<T, RpcError>;

/// An error with `code` and `message`.
pub fn status(code: Code, message: impl ToString) -> RpcError {
    RpcError { code, message: message.to_string() }
}

/// One frame: stream id, type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// The stream (call) it belongs to.
    pub stream: u32,
    /// [`TYPE_REQUEST`], [`TYPE_RESPONSE`] or another type the daemon ignores.
    pub kind: u8,
    /// The protobuf body.
    pub body: Vec<u8>,
}

/// Encodes a frame.
pub fn frame(stream: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// The bytes received on one connection, cut into frames as they complete.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any. A body over [`MAX_BODY`] is an error: the peer is
    /// broken or hostile, and the connection is closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_BODY {
            return Err(format!("a ttrpc frame of {len} bytes (the limit is {MAX_BODY})"));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let kind = self.buf[8];
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        if self.buf.is_empty() {
            // Give back what a large message grew.
            self.buf = Vec::new();
        }
        Ok(Some(Frame { stream, kind, body }))
    }
}

/// Cuts `data` into frames as a connection delivering it `chunk` bytes at a time would: the
/// frames completed before the stream ended or broke, and the error that broke it, if any.
pub fn frames_of(data: &[u8], chunk: usize) -> (Vec<Frame>, Option<String>) {
    let mut reader = FrameReader::default();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// The response frame for `stream`: the payload, or the error's status.
pub fn response(stream: u32, result: RpcResult<Vec<u8>>) -> Vec<u8> {
    let mut resp = Response::new();
    let mut st = Status::new();
    match result {
        Ok(payload) => {
            st.code = Code::OK.into();
            resp.payload = payload;
        }
        Err(e) => {
            st.code = e.code.into();
            st.message = e.message;
        }
    }
    resp.status = MessageField::some(st);
    frame(stream, TYPE_RESPONSE, &resp.write_to_bytes().unwrap_or_default())
}

/// Decodes a request frame's body.
pub fn parse_request(body: &[u8]) -> RpcResult<Request> {
    Request::parse_from_bytes(body)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("a malformed ttrpc request: {e}")))
}

/// A unary call on a connected stream: sends `service`/`method` with `payload` as stream
/// `stream` and waits (at most `timeout`) for its response. Other streams' frames are skipped.
pub fn call(
    conn: &mut UnixStream,
    stream: u32,
    service: &str,
    method: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut req = Request::new();
    req.service = service.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req.timeout_nano = timeout.as_nanos().min(i64::MAX as u128) as i64;
    let body = req.write_to_bytes().map_err(|e| format!("encoding the request: {e}"))?;
    conn.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.write_all(&frame(stream, TYPE_REQUEST, &body)).map_err(|e| format!("sending {method}: {e}"))?;
    let mut reader = FrameReader::default();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(f) = reader.next_frame()? {
            if f.stream != stream || f.kind != TYPE_RESPONSE {
                continue;
            }
            let resp = Response::parse_from_bytes(&f.body).map_err(|e| format!("a malformed response: {e}"))?;
            let code = resp.status.code.value();
            if code != Code::OK as i32 {
                return Err(format!("{method}: code {code}: {}", resp.status.message));
            }
            return Ok(resp.payload);
        }
        let n = conn.read(&mut buf).map_err(|e| format!("waiting for the answer to {method}: {e}"))?;
        if n == 0 {
            return Err(format!("the connection closed before the answer to {method}"));
        }
        reader.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_where_they_end_and_oversize_is_refused() {
        let mut r = FrameReader::default();
        let a = frame(1, TYPE_REQUEST, b"hello");
        let b = frame(3, TYPE_REQUEST, b"");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        r.push(&all[..7]);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&all[7..]);
        assert_eq!(r.next_frame().unwrap(), Some(Frame { stream: 1, kind: TYPE_REQUEST, body: b"hello".to_vec() }));
        assert_eq!(r.next_frame().unwrap(), Some(Frame { stream: 3, kind: TYPE_REQUEST, body: vec![] }));
        assert_eq!(r.next_frame().unwrap(), None);
        let mut huge = FrameReader::default();
        huge.push(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0]);
        assert!(huge.next_frame().unwrap_err().contains("limit"));
    }

    #[test]
    fn responses_carry_the_status() {
        let bytes = response(5, Err(status(Code::NOT_FOUND, "task x not found")));
        let mut r = FrameReader::default();
        r.push(&bytes);
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.stream, f.kind), (5, TYPE_RESPONSE));
        let resp = Response::parse_from_bytes(&f.body).unwrap();
        assert_eq!(resp.status.code.value(), Code::NOT_FOUND as i32);
        assert_eq!(resp.status.message, "task x not found");
    }

    #[test]
    fn a_call_round_trips_through_a_peer() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut r = FrameReader::default();
            let mut buf = [0u8; 1024];
            loop {
                if let Some(f) = r.next_frame().unwrap() {
                    let req = parse_request(&f.body).unwrap();
                    assert_eq!((req.service.as_str(), req.method.as_str()), ("svc", "M"));
                    b.write_all(&frame(99, TYPE_RESPONSE, b"junk")).unwrap();
                    b.write_all(&response(f.stream, Ok(req.payload))).unwrap();
                    return;
                }
                let n = b.read(&mut buf).unwrap();
                r.push(&buf[..n]);
            }
        });
        let got = call(&mut a, 7, "svc", "M", b"ping".to_vec(), Duration::from_secs(5)).unwrap();
        assert_eq!(got, b"ping");
        peer.join().unwrap();
    }
}
