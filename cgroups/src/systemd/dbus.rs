//! Just enough D-Bus to talk to systemd's manager: the wire format (little-endian messages,
//! the basic types, arrays, structs and variants), `AUTH EXTERNAL`, method calls and signals.
//!
//! strata connects to systemd's private socket, a direct connection with no bus daemon in
//! between (as `systemctl` does when run as root), so there is no `Hello` and no name to
//! address. Signals that arrive are read and dropped: strata polls the state it waits for.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A D-Bus value of the types strata sends and receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `y`
    Byte(u8),
    /// `b`
    Bool(bool),
    /// `i`
    I32(i32),
    /// `u`
    U32(u32),
    /// `x`
    I64(i64),
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `o`
    ObjectPath(String),
    /// `g`
    Signature(String),
    /// `a<sig>`: the element signature and the elements.
    Array(String, Vec<Value>),
    /// `(...)`
    Struct(Vec<Value>),
    /// `v`
    Variant(Box<Value>),
}

impl Value {
    /// The value's type signature.
    pub fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::I32(_) => "i".into(),
            Value::U32(_) => "u".into(),
            Value::I64(_) => "x".into(),
            Value::U64(_) => "t".into(),
            Value::Str(_) => "s".into(),
            Value::ObjectPath(_) => "o".into(),
            Value::Signature(_) => "g".into(),
            Value::Array(elem, _) => format!("a{elem}"),
            Value::Struct(fields) => format!("({})", fields.iter().map(Value::signature).collect::<String>()),
            Value::Variant(_) => "v".into(),
        }
    }

    /// The string of an `s`, `o` or `g` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }
}

/// The alignment of the first type in `sig`.
fn alignment(sig: &str) -> usize {
    match sig.as_bytes().first() {
        Some(b'y' | b'g' | b'v') => 1,
        Some(b'x' | b't' | b'd' | b'(' | b'{') => 8,
        _ => 4,
    }
}

fn pad(buf: &mut Vec<u8>, align: usize) {
    while !buf.len().is_multiple_of(align) {
        buf.push(0);
    }
}

/// Appends `v` to `buf`, whose start is 8-aligned in the message.
fn marshal(buf: &mut Vec<u8>, v: &Value) -> io::Result<()> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "D-Bus value too long");
    pad(buf, alignment(&v.signature()));
    match v {
        Value::Byte(b) => buf.push(*b),
        Value::Bool(b) => buf.extend_from_slice(&u32::from(*b).to_le_bytes()),
        Value::I32(i) => buf.extend_from_slice(&i.to_le_bytes()),
        Value::U32(u) => buf.extend_from_slice(&u.to_le_bytes()),
        Value::I64(i) => buf.extend_from_slice(&i.to_le_bytes()),
        Value::U64(u) => buf.extend_from_slice(&u.to_le_bytes()),
        Value::Str(s) | Value::ObjectPath(s) => {
            buf.extend_from_slice(&u32::try_from(s.len()).map_err(|_| too_long())?.to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        Value::Signature(s) => {
            buf.push(u8::try_from(s.len()).map_err(|_| too_long())?);
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        Value::Array(elem, items) => {
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            pad(buf, alignment(elem));
            let start = buf.len();
            for item in items {
                marshal(buf, item)?;
            }
            let len = u32::try_from(buf.len() - start).map_err(|_| too_long())?;
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Value::Struct(fields) => {
            for f in fields {
                marshal(buf, f)?;
            }
        }
        Value::Variant(inner) => {
            marshal(buf, &Value::Signature(inner.signature()))?;
            marshal(buf, inner)?;
        }
    }
    Ok(())
}

/// Reads values out of a message, positions counted from the message's start.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed D-Bus message: {}", what.into()))
}

impl Reader<'_> {
    fn align(&mut self, align: usize) -> io::Result<()> {
        let to = self.pos.div_ceil(align) * align;
        if to > self.buf.len() {
            return Err(bad("padding past the end"));
        }
        self.pos = to;
        Ok(())
    }

    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("value past the end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> io::Result<u32> {
        self.align(4)?;
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> io::Result<u64> {
        self.align(8)?;
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, len: usize) -> io::Result<String> {
        let s = self.take(len)?.to_vec();
        if self.take(1)? != [0] {
            return Err(bad("string without its NUL"));
        }
        String::from_utf8(s).map_err(|_| bad("string not UTF-8"))
    }

    /// Reads one complete type from the front of `sig`, which it advances.
    fn value(&mut self, sig: &mut &str, depth: usize) -> io::Result<Value> {
        if depth > 32 {
            return Err(bad("nesting too deep"));
        }
        let (c, rest) = sig.split_at_checked(1).ok_or_else(|| bad("signature ends early"))?;
        *sig = rest;
        Ok(match c {
            "y" => Value::Byte(self.take(1)?[0]),
            "b" => Value::Bool(self.u32()? != 0),
            "i" => Value::I32(self.u32()? as i32),
            "u" => Value::U32(self.u32()?),
            "x" => Value::I64(self.u64()? as i64),
            "t" => Value::U64(self.u64()?),
            "s" | "o" => {
                let len = self.u32()? as usize;
                let s = self.string(len)?;
                if c == "s" { Value::Str(s) } else { Value::ObjectPath(s) }
            }
            "g" => {
                let len = usize::from(self.take(1)?[0]);
                Value::Signature(self.string(len)?)
            }
            "v" => {
                let len = usize::from(self.take(1)?[0]);
                let inner_sig = self.string(len)?;
                let mut s = inner_sig.as_str();
                let v = self.value(&mut s, depth + 1)?;
                if !s.is_empty() {
                    return Err(bad("variant holds more than one type"));
                }
                Value::Variant(Box::new(v))
            }
            "a" => {
                let len = self.u32()? as usize;
                let elem = single_type(sig)?;
                self.align(alignment(elem))?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("array"))?;
                let mut items = Vec::new();
                while self.pos < end {
                    let mut s = elem;
                    let before = self.pos;
                    items.push(self.value(&mut s, depth + 1)?);
                    // Every well-formed element takes at least a byte; one that takes none
                    // would repeat forever.
                    if self.pos == before {
                        return Err(bad("array element of no size"));
                    }
                }
                if self.pos != end {
                    return Err(bad("array length"));
                }
                *sig = &sig[elem.len()..];
                Value::Array(elem.to_string(), items)
            }
            "(" | "{" => {
                self.align(8)?;
                let close = if c == "(" { ")" } else { "}" };
                let mut fields = Vec::new();
                while !sig.starts_with(close) {
                    fields.push(self.value(sig, depth + 1)?);
                }
                *sig = &sig[1..];
                // The specification has no empty struct, and a dict entry is a key and a value.
                if fields.is_empty() || (c == "{" && fields.len() != 2) {
                    return Err(bad(format!("{c}{close} with {} fields", fields.len())));
                }
                Value::Struct(fields)
            }
            other => return Err(bad(format!("type {other:?}"))),
        })
    }
}

/// The first complete type of `sig`.
fn single_type(sig: &str) -> io::Result<&str> {
    // Type codes are ASCII; slicing below is by byte.
    if !sig.is_ascii() {
        return Err(bad("signature not ASCII"));
    }
    let bytes = sig.as_bytes();
    let mut i = 0;
    while bytes.get(i) == Some(&b'a') {
        i += 1;
    }
    match bytes.get(i) {
        Some(b'(' | b'{') => {
            let mut depth = 0usize;
            for (j, b) in bytes.iter().enumerate().skip(i) {
                match b {
                    b'(' | b'{' => depth += 1,
                    b')' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(&sig[..=j]);
                        }
                    }
                    _ => {}
                }
            }
            Err(bad("unbalanced signature"))
        }
        Some(_) => Ok(&sig[..=i]),
        None => Err(bad("signature ends early")),
    }
}

/// Message types.
const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;

/// A message received.
#[derive(Debug)]
pub struct Message {
    kind: u8,
    reply_serial: Option<u32>,
    /// `ERROR_NAME`, for errors.
    pub error_name: Option<String>,
    /// `MEMBER`, for signals.
    pub member: Option<String>,
    /// The body's values.
    pub body: Vec<Value>,
}

/// Encodes a method call.
pub fn method_call(serial: u32, path: &str, interface: &str, member: &str, body: &[Value]) -> io::Result<Vec<u8>> {
    let mut payload = Vec::new();
    for v in body {
        marshal(&mut payload, v)?;
    }
    let sig: String = body.iter().map(Value::signature).collect();
    let field = |code: u8, v: Value| Value::Struct(vec![Value::Byte(code), Value::Variant(Box::new(v))]);
    let mut fields = vec![
        field(1, Value::ObjectPath(path.into())),
        field(2, Value::Str(interface.into())),
        field(3, Value::Str(member.into())),
    ];
    if !sig.is_empty() {
        fields.push(field(8, Value::Signature(sig)));
    }
    let mut msg = vec![b'l', METHOD_CALL, 0, 1];
    msg.extend_from_slice(&u32::try_from(payload.len()).map_err(|_| bad("body too long"))?.to_le_bytes());
    msg.extend_from_slice(&serial.to_le_bytes());
    marshal(&mut msg, &Value::Array("(yv)".into(), fields))?;
    pad(&mut msg, 8);
    msg.extend_from_slice(&payload);
    Ok(msg)
}

/// The largest message strata accepts (systemd's replies are far smaller).
const MAX_MESSAGE: usize = 1 << 20;

/// Decodes one message from its complete bytes.
pub fn parse_message(bytes: &[u8]) -> io::Result<Message> {
    if bytes.len() < 16 || bytes[0] != b'l' || bytes[3] != 1 {
        return Err(bad("not a little-endian version-1 message"));
    }
    let mut r = Reader { buf: bytes, pos: 12 };
    let mut sig = "a(yv)";
    let Value::Array(_, fields) = r.value(&mut sig, 0)? else {
        return Err(bad("header fields"));
    };
    r.align(8)?;
    let mut m = Message { kind: bytes[1], reply_serial: None, error_name: None, member: None, body: Vec::new() };
    let mut body_sig = String::new();
    for f in fields {
        let Value::Struct(f) = f else { continue };
        let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (f.first(), f.get(1)) else { continue };
        match (code, v.as_ref()) {
            (3, Value::Str(s)) => m.member = Some(s.clone()),
            (4, Value::Str(s)) => m.error_name = Some(s.clone()),
            (5, Value::U32(u)) => m.reply_serial = Some(*u),
            (8, Value::Signature(s)) => body_sig = s.clone(),
            _ => {}
        }
    }
    let mut s = body_sig.as_str();
    while !s.is_empty() {
        m.body.push(r.value(&mut s, 0)?);
    }
    Ok(m)
}

/// A call that systemd answered with an error.
#[derive(Debug)]
pub struct CallError {
    /// The D-Bus error name, e.g. `org.freedesktop.systemd1.NoSuchUnit`.
    pub name: String,
    /// Its message.
    pub message: String,
}

/// A direct connection to a D-Bus peer.
pub struct Connection {
    stream: BufReader<UnixStream>,
    serial: u32,
}

impl Connection {
    /// Connects to the socket at `path` and authenticates as the caller's uid.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Connection> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        let mut stream = BufReader::new(stream);
        stream.get_mut().write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = String::new();
        stream.by_ref().take(512).read_line(&mut line)?;
        if !line.starts_with("OK ") {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("D-Bus authentication refused: {}", line.trim()),
            ));
        }
        stream.get_mut().write_all(b"BEGIN\r\n")?;
        let mut conn = Connection { stream, serial: 0 };
        conn.ping(timeout)?;
        Ok(conn)
    }

    /// Pings the peer until it answers. systemd's server leaves a message that arrives in the
    /// same read as `BEGIN` unread until more bytes come (seen with systemd 252: a call on a
    /// second connection of a process went unanswered), so each unanswered ping is followed by
    /// another; the answer to any of them means the peer reads the connection.
    fn ping(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut wait = Duration::from_millis(10);
        let first = self.serial.wrapping_add(1);
        loop {
            self.serial = self.serial.wrapping_add(1);
            let ping = method_call(self.serial, "/", "org.freedesktop.DBus.Peer", "Ping", &[])?;
            self.stream.get_mut().write_all(&ping)?;
            self.stream.get_ref().set_read_timeout(Some(wait))?;
            match self.read_message() {
                Ok(m) if matches!(m.kind, METHOD_RETURN | ERROR) && m.reply_serial.is_some_and(|s| s >= first) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if std::time::Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "the D-Bus peer does not answer pings"));
                    }
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        self.stream.get_ref().set_read_timeout(Some(timeout))
    }

    fn read_message(&mut self) -> io::Result<Message> {
        let mut fixed = [0u8; 16];
        self.stream.read_exact(&mut fixed)?;
        if fixed[0] != b'l' {
            return Err(bad("big-endian messages are not expected"));
        }
        let body = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize;
        let fields = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        let header = (16 + fields).div_ceil(8) * 8;
        let total = header.checked_add(body).filter(|t| *t <= MAX_MESSAGE).ok_or_else(|| bad("message too large"))?;
        let mut bytes = fixed.to_vec();
        bytes.resize(total, 0);
        self.stream.read_exact(&mut bytes[16..])?;
        parse_message(&bytes)
    }

    /// Calls `interface.member` on the object at `path` and returns the reply's body.
    pub fn call(
        &mut self,
        path: &str,
        interface: &str,
        member: &str,
        body: &[Value],
    ) -> io::Result<Result<Vec<Value>, CallError>> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        self.stream.get_mut().write_all(&method_call(serial, path, interface, member, body)?)?;
        loop {
            let m = self.read_message()?;
            match m.kind {
                METHOD_RETURN if m.reply_serial == Some(serial) => return Ok(Ok(m.body)),
                ERROR if m.reply_serial == Some(serial) => {
                    let message = m.body.first().and_then(Value::as_str).unwrap_or("").to_string();
                    return Ok(Err(CallError { name: m.error_name.unwrap_or_default(), message }));
                }
                // signals (systemd sends its manager's to every direct connection) and
                // anything else are not what strata waits for
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method call is laid out as the specification says: header, fields padded to 8, body.
    #[test]
    fn a_method_call_has_the_wire_layout() {
        let msg = method_call(7, "/o", "i.f", "M", &[Value::Str("ab".into()), Value::U64(1)]).unwrap();
        assert_eq!(&msg[..4], b"l\x01\x00\x01");
        // body: "ab" (4 + 2 + 1 = 7 bytes), pad to 8, then the u64
        assert_eq!(u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]), 16);
        assert_eq!(u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]), 7);
        assert_eq!(msg.len() % 8, 0);
        let body = &msg[msg.len() - 16..];
        assert_eq!(body, b"\x02\x00\x00\x00ab\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00");
    }

    /// Everything strata marshals reads back equal, including systemd's property arrays.
    #[test]
    fn values_read_back() {
        let props = Value::Array(
            "(sv)".into(),
            vec![
                Value::Struct(vec![Value::Str("Delegate".into()), Value::Variant(Box::new(Value::Bool(true)))]),
                Value::Struct(vec![
                    Value::Str("PIDs".into()),
                    Value::Variant(Box::new(Value::Array("u".into(), vec![Value::U32(42)]))),
                ]),
                Value::Struct(vec![
                    Value::Str("AllowedCPUs".into()),
                    Value::Variant(Box::new(Value::Array("y".into(), vec![Value::Byte(3)]))),
                ]),
                Value::Struct(vec![Value::Str("MemoryMax".into()), Value::Variant(Box::new(Value::U64(u64::MAX)))]),
            ],
        );
        let body = [
            Value::Str("x.scope".into()),
            props,
            Value::Array("(sa(sv))".into(), vec![]),
            Value::ObjectPath("/a/b".into()),
            Value::I32(-5),
        ];
        let mut msg = method_call(1, "/p", "i", "m", &body).unwrap();
        msg[1] = METHOD_RETURN;
        let parsed = parse_message(&msg).unwrap();
        assert_eq!(parsed.body, body);
    }

    /// Hostile bytes give an error, never a panic or an endless loop.
    #[test]
    fn malformed_messages_are_errors() {
        let good = method_call(1, "/p", "i", "m", &[Value::Str("abc".into())]).unwrap();
        for cut in 0..good.len() {
            let _ = parse_message(&good[..cut]);
        }
        let mut bad_len = good.clone();
        let n = bad_len.len();
        bad_len[n - 8] = 0xff; // the string's length
        assert!(parse_message(&bad_len).is_err());
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0xff;
            let _ = parse_message(&flipped);
        }
    }

    /// Found by the fuzzer: a signature with a character of two bytes after `a` was sliced
    /// through the character (a panic).
    #[test]
    fn non_ascii_signatures_are_refused() {
        let data = include_bytes!("../../../fuzz/corpus/dbus_message/non-ascii-signature");
        assert!(parse_message(data).unwrap_err().to_string().contains("not ASCII"));
    }

    /// Found by the fuzzer: an array of empty dict entries (signature `a{}`) looped forever, each
    /// element reading nothing. Empty structs and dict entries without two fields are refused.
    #[test]
    fn arrays_of_empty_structs_are_refused_not_looped_on() {
        let data = include_bytes!("../../../fuzz/corpus/dbus_message/array-of-empty-dict");
        let err = parse_message(data).unwrap_err().to_string();
        assert!(err.contains("{} with 0 fields"), "{err}");
        // Each array below says its elements take 8 bytes.
        let mut buf = [0u8; 64];
        buf[0] = 8;
        for sig in ["()", "{s}", "{sss}", "a()", "a{}", "a{s}"] {
            let mut reader = Reader { buf: &buf, pos: 0 };
            let mut s = sig;
            assert!(reader.value(&mut s, 0).is_err(), "{sig}");
        }
    }
}
