//! The events on their way to containerd, sent without ever blocking the daemon's loop: one
//! connection to containerd's ttrpc address (made again after containerd restarts), one
//! `Events.Forward` call in flight at a time so that events arrive in the order they happened,
//! an answer awaited through the loop's epoll, failures retried with back-off, and a bounded
//! queue (the oldest event gives way, loudly, when containerd is gone for long).
//!
//! An event whose answer did not come in time is sent again: containerd may see it twice,
//! never zero times while it is reachable.

use super::ttrpc::{self as wire, FrameReader};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::ttrpc::{Code, Response};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long containerd may take to answer one event before it is sent again.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts to publish one event before it is dropped.
pub const ATTEMPTS: u32 = 20;
/// Events kept at most; beyond, the oldest waiting one is dropped.
pub const MAX_QUEUE: usize = 1024;
const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// A queued event: topic and the packed message.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic, e.g. `/tasks/exit`.
    pub topic: &'static str,
    /// The event, packed.
    pub event: Any,
}

/// The call in flight: its stream and when its answer is overdue.
#[derive(Debug)]
struct InFlight {
    stream: u32,
    deadline: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Publisher {
    address: String,
    namespace: String,
    conn: Option<OwnedFd>,
    /// Counts connections made: a new connection often gets the number of the one just
    /// closed, and the loop must watch it afresh all the same.
    generation: u64,
    queue: VecDeque<Event>,
    in_flight: Option<InFlight>,
    /// Bytes of the request in flight not yet written.
    out: Vec<u8>,
    frames: FrameReader,
    stream: u32,
    retry_at: Option<Instant>,
    delay: Duration,
    attempts: u32,
    /// Events dropped (queue full or too many attempts), for the log and the tests.
    pub dropped: u64,
}

fn connect(path: &str) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(std::io::Error::from)?;
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(std::io::Error::from)?;
    Ok(fd)
}

impl Publisher {
    /// A publisher to containerd's ttrpc `address` for `namespace`.
    pub fn new(address: String, namespace: String) -> Publisher {
        Publisher {
            address,
            namespace,
            conn: None,
            generation: 0,
            queue: VecDeque::new(),
            in_flight: None,
            out: Vec::new(),
            frames: FrameReader::default(),
            stream: 1,
            retry_at: None,
            delay: FIRST_DELAY,
            attempts: 0,
            dropped: 0,
        }
    }

    /// Queues an event.
    pub fn push(&mut self, topic: &'static str, event: Any) {
        if self.queue.len() >= MAX_QUEUE {
            // The head may be in flight: the oldest one that is not gives way.
            let victim = usize::from(self.in_flight.is_some());
            if let Some(ev) = self.queue.remove(victim) {
                self.dropped += 1;
                log::error!("{MAX_QUEUE} events wait for containerd: dropping the oldest, {}", ev.topic);
            }
        }
        self.queue.push_back(Event { topic, event });
    }

    /// Whether every event went out.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The descriptor the loop should watch and for what (`EPOLLIN`, plus `EPOLLOUT` while a
    /// request is partly written), with the connection's generation, if any.
    pub fn interest(&self) -> Option<(RawFd, u32, u64)> {
        let conn = self.conn.as_ref()?;
        let mut events = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
        if !self.out.is_empty() {
            events |= libc::EPOLLOUT as u32;
        }
        Some((conn.as_raw_fd(), events, self.generation))
    }

    /// When the loop must call [`Publisher::drive`] even without readiness: a retry is due, or
    /// an answer overdue.
    pub fn deadline(&self) -> Option<Instant> {
        match (&self.in_flight, self.retry_at) {
            (Some(f), _) => Some(f.deadline),
            (None, Some(t)) if !self.queue.is_empty() => Some(t),
            _ => None,
        }
    }

    /// Makes all the progress possible now without blocking: reads answers, sends the next
    /// event, notices an overdue answer.
    pub fn drive(&mut self, now: Instant) {
        loop {
            // A failed read backs off; a connection closed between calls is made again below.
            if self.conn.is_some() && !self.read_answers(now) && self.retry_at.is_some_and(|t| now < t) {
                return;
            }
            if let Some(f) = &self.in_flight {
                if now >= f.deadline {
                    self.fail(now, "no answer in time");
                    return;
                }
                if !self.out.is_empty() && !self.write_out(now) {
                    return;
                }
                return;
            }
            let Some(head) = self.queue.front().cloned() else { return };
            if self.retry_at.is_some_and(|t| now < t) {
                return;
            }
            if self.conn.is_none() {
                let path = self.address.strip_prefix("unix://").unwrap_or(&self.address).to_string();
                match connect(&path) {
                    Ok(fd) => {
                        self.conn = Some(fd);
                        self.generation += 1;
                        self.frames = FrameReader::default();
                    }
                    Err(e) => {
                        self.fail(now, &format!("connecting to {path}: {e}"));
                        return;
                    }
                }
            }
            self.start(&head, now);
            if !self.write_out(now) {
                return;
            }
        }
    }

    /// Frames the request for `ev` as the call in flight.
    fn start(&mut self, ev: &Event, now: Instant) {
        let envelope = Envelope {
            timestamp: MessageField::some(super::service::now()),
            namespace: self.namespace.clone(),
            topic: ev.topic.to_string(),
            event: MessageField::some(ev.event.clone()),
            ..Default::default()
        };
        let req = ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() };
        let mut call = containerd_shim::protos::ttrpc::Request::new();
        call.service = "containerd.services.events.ttrpc.v1.Events".into();
        call.method = "Forward".into();
        call.payload = req.write_to_bytes().unwrap_or_default();
        call.timeout_nano = ANSWER_TIMEOUT.as_nanos() as i64;
        // Client streams are odd.
        self.stream = self.stream.wrapping_add(2) | 1;
        self.out = wire::frame(self.stream, wire::TYPE_REQUEST, &call.write_to_bytes().unwrap_or_default());
        self.in_flight = Some(InFlight { stream: self.stream, deadline: now + ANSWER_TIMEOUT });
    }

    /// Writes what it can of the request; false when the connection failed.
    fn write_out(&mut self, now: Instant) -> bool {
        let Some(conn) = &self.conn else { return false };
        // SAFETY: the descriptor is owned by `self.conn` and stays open during the call; the
        // File is forgotten, never dropped.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(conn.as_raw_fd()) });
        while !self.out.is_empty() {
            match f.write(&self.out) {
                Ok(0) => {
                    self.fail(now, "the connection closed");
                    return false;
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(now, &format!("sending: {e}"));
                    return false;
                }
            }
        }
        true
    }

    /// Reads what containerd sent; completes the call in flight when its answer is there.
    /// False when the connection failed or closed.
    fn read_answers(&mut self, now: Instant) -> bool {
        let Some(conn) = &self.conn else { return false };
        // SAFETY: as in `write_out`.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(conn.as_raw_fd()) });
        let mut buf = [0u8; 4096];
        let mut broken = None;
        loop {
            match f.read(&mut buf) {
                Ok(0) => {
                    broken = Some("containerd closed the connection".to_string());
                    break;
                }
                Ok(n) => self.frames.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    broken = Some(format!("reading: {e}"));
                    break;
                }
            }
        }
        // Answers that came before the connection closed still count.
        loop {
            let frame = match self.frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.fail(now, &e);
                    return false;
                }
            };
            let Some(flight) = &self.in_flight else { continue };
            if frame.kind != wire::TYPE_RESPONSE || frame.stream != flight.stream {
                continue;
            }
            let ok = Response::parse_from_bytes(&frame.body)
                .map(|r| r.status.code.value() == Code::OK as i32)
                .unwrap_or(false);
            self.in_flight = None;
            if ok {
                self.queue.pop_front();
                self.attempts = 0;
                self.delay = FIRST_DELAY;
                self.retry_at = None;
            } else {
                self.fail(now, "containerd refused the event");
                return false;
            }
        }
        match broken {
            // A connection that closed with nothing in flight is simply made again when needed.
            Some(_) if self.in_flight.is_none() => {
                self.conn = None;
                self.out.clear();
                false
            }
            Some(why) => {
                self.fail(now, &why);
                false
            }
            None => true,
        }
    }

    /// A failed attempt: drops the connection, backs off, and drops the head event after
    /// [`ATTEMPTS`].
    fn fail(&mut self, now: Instant, why: &str) {
        self.conn = None;
        self.in_flight = None;
        self.out.clear();
        self.attempts += 1;
        let topic = self.queue.front().map_or("", |e| e.topic);
        log::warn!("publishing {topic} (attempt {}): {why}", self.attempts);
        if self.attempts >= ATTEMPTS {
            log::error!("dropping event {topic} after {} attempts", self.attempts);
            self.queue.pop_front();
            self.dropped += 1;
            self.attempts = 0;
        }
        self.retry_at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn event(n: u8) -> Any {
        let mut a = Any::new();
        a.type_url = "containerd.events.TaskExit".into();
        a.value = vec![n];
        a
    }

    /// A containerd that answers `answer` events and records their payload bytes.
    fn fake_containerd(listener: UnixListener, answer: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let (mut s, _) = listener.accept().unwrap();
            let mut frames = FrameReader::default();
            let mut buf = [0u8; 4096];
            while got.len() < answer {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                frames.push(&buf[..n]);
                while let Some(f) = frames.next_frame().unwrap() {
                    let req = wire::parse_request(&f.body).unwrap();
                    let fwd = ForwardRequest::parse_from_bytes(&req.payload).unwrap();
                    got.push(fwd.envelope.event.value[0]);
                    s.write_all(&wire::response(f.stream, Ok(Vec::new()))).unwrap();
                }
            }
            got
        })
    }

    fn drive_until(p: &mut Publisher, mut done: impl FnMut(&Publisher) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(p) {
            assert!(Instant::now() < deadline, "the publisher made no progress: {} queued", p.len());
            p.drive(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn events_arrive_in_order_and_once_answered_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock.ttrpc");
        let server = fake_containerd(UnixListener::bind(&path).unwrap(), 5);
        let mut p = Publisher::new(format!("unix://{}", path.display()), "default".into());
        for n in 0..5 {
            p.push("/tasks/exit", event(n));
        }
        drive_until(&mut p, Publisher::is_empty);
        assert_eq!(server.join().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(p.dropped, 0);
    }

    #[test]
    fn an_absent_containerd_is_retried_with_back_off_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.sock");
        let mut p = Publisher::new(path.display().to_string(), "default".into());
        p.push("/tasks/exit", event(7));
        let t = Instant::now();
        p.drive(Instant::now());
        // Blocking would mean waiting out a connect or an answer (ANSWER_TIMEOUT): the bound is
        // below that, and far above what a loaded machine takes to fail a connect.
        assert!(t.elapsed() < ANSWER_TIMEOUT / 2, "drive blocked");
        assert!(p.deadline().is_some(), "a retry is scheduled");
        assert_eq!(p.len(), 1);
        // containerd comes back: the event goes out.
        let server = fake_containerd(UnixListener::bind(&path).unwrap(), 1);
        drive_until(&mut p, Publisher::is_empty);
        assert_eq!(server.join().unwrap(), vec![7]);
    }

    #[test]
    fn an_unanswered_event_is_sent_again_on_a_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut p = Publisher::new(path.display().to_string(), "default".into());
        p.push("/tasks/exit", event(9));
        p.drive(Instant::now());
        // Nobody answers: past the deadline the attempt fails and a retry is planned.
        let (mute, _) = listener.accept().unwrap();
        p.drive(Instant::now() + ANSWER_TIMEOUT + Duration::from_millis(1));
        assert!(p.interest().is_none(), "the connection is dropped");
        drop(mute);
        let server = fake_containerd(listener, 1);
        drive_until(&mut p, Publisher::is_empty);
        assert_eq!(server.join().unwrap(), vec![9]);
    }

    #[test]
    fn a_new_connection_is_a_new_generation_even_with_the_old_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restarting.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut p = Publisher::new(path.display().to_string(), "default".into());
        let server = fake_containerd(listener.try_clone().unwrap(), 1);
        p.push("/tasks/exit", event(1));
        p.drive(Instant::now());
        let (fd1, _, gen1) = p.interest().expect("connected");
        drive_until(&mut p, Publisher::is_empty);
        // containerd closes the connection (a restart); the next event needs a new one.
        assert_eq!(server.join().unwrap(), vec![1]);
        let server = fake_containerd(listener, 1);
        p.push("/tasks/exit", event(2));
        // The newest connection seen while the event went out.
        let mut newest: Option<(RawFd, u32, u64)> = None;
        drive_until(&mut p, |p| {
            if let Some(i) = p.interest()
                && newest.is_none_or(|n| i.2 > n.2)
            {
                newest = Some(i);
            }
            p.is_empty()
        });
        assert_eq!(server.join().unwrap(), vec![2]);
        let (fd2, _, gen2) = newest.expect("connected again");
        assert!(gen2 > gen1, "fd {fd1} then {fd2}: the loop must re-watch the new connection");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut p = Publisher::new("/nonexistent/sock".into(), "default".into());
        for n in 0..(MAX_QUEUE + 10) {
            p.push("/tasks/exit", event(n as u8));
        }
        assert_eq!(p.len(), MAX_QUEUE);
        assert_eq!(p.dropped, 10);
    }
}
