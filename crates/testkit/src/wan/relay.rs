//! User-space WAN delay: TCP relays that hold every chunk for a link's one-way
//! delay, in the manner of toxiproxy, plus an echo service to measure round trips.
//!
//! A [`Route`] is a listening socket (created in whatever namespace it should
//! serve) and a target. Each accepted connection is forwarded to the target over a
//! socket made inside the route's `dial_from` namespace, so that the onward leg
//! crosses that namespace's link and is subject to its cuts. Each direction of a
//! relayed connection has a reader thread that stamps every chunk with `now +
//! delay` and a writer thread that writes it no earlier than that: latency is
//! added, throughput is kept (up to [`QUEUE_CHUNKS`] chunks in flight per
//! direction, then the reader stops reading and TCP flow control pushes back).
//! Connection set-up costs one round trip, as over a real link. Threads sleep with
//! `std::thread::sleep`, so delays are precise to tens of microseconds.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use super::netns::Netns;

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued per direction before the reader waits.
const QUEUE_CHUNKS: usize = 64;
/// How long an onward connection may take (longer only while a link is cut).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often acceptors look at the stop flag.
const POLL_MS: u16 = 100;
/// Stack of relay threads: they keep their buffers on the heap.
const STACK_BYTES: usize = 256 * 1024;

/// What an accepted connection is handed to.
#[derive(Debug, Clone)]
pub(crate) enum Service {
    /// Forward to `target`, dialing from inside `dial_from`, holding data for `delay`
    /// in each direction.
    Relay { target: SocketAddr, dial_from: Arc<Netns>, delay: Duration },
    /// Send every byte back.
    Echo,
}

/// A listening socket and what to do with its connections.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) listener: TcpListener,
    pub(crate) service: Service,
}

/// All relays, echo services and their connections of one WAN. Dropping it (or
/// [`Relays::shutdown`]) closes every listener and connection.
#[derive(Debug)]
pub(crate) struct Relays {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stop: AtomicBool,
    /// Threads of this WAN still running.
    threads: AtomicUsize,
    /// Open connections (both sockets of a relayed one), to be shut down on stop.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: AtomicU64,
}

impl Relays {
    pub(crate) fn new() -> Relays {
        Relays { inner: Arc::new(Inner::default()) }
    }

    /// Serves `routes` from one acceptor thread until shutdown.
    pub(crate) fn serve(&self, routes: Vec<Route>) -> std::io::Result<()> {
        for route in &routes {
            route.listener.set_nonblocking(true)?;
        }
        let inner = self.inner.clone();
        spawn(&self.inner, "wan-accept", move || accept_loop(&inner, &routes))
    }

    /// Threads still running (acceptors and connection pumps).
    pub(crate) fn threads(&self) -> usize {
        self.inner.threads.load(Ordering::SeqCst)
    }

    /// Stops accepting, shuts every connection down and waits up to `limit` for the
    /// threads to end. Returns how many are still running after that.
    pub(crate) fn shutdown(&self, limit: Duration) -> usize {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.shutdown_conns();
        let deadline = Instant::now() + limit;
        while self.threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.inner.shutdown_conns();
        }
        self.threads()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        let left = self.shutdown(Duration::from_secs(2));
        if left > 0 {
            eprintln!("wan: {left} relay threads still running after shutdown; they end on their own");
        }
    }
}

impl Inner {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn shutdown_conns(&self) {
        let conns = self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for stream in conns.values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Registers the sockets of one connection; the returned token deregisters them
    /// when the last thread holding it ends.
    fn register(self: &Arc<Inner>, streams: Vec<TcpStream>) -> Arc<ConnToken> {
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, streams);
        if self.stopped() {
            // Shutdown may have swept the registry before this connection was in it.
            self.shutdown_conns();
        }
        Arc::new(ConnToken { inner: self.clone(), id })
    }
}

struct ConnToken {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for ConnToken {
    fn drop(&mut self) {
        self.inner.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.id);
    }
}

/// Counts a thread of this WAN while it lives.
struct ThreadCount(Arc<Inner>);

impl Drop for ThreadCount {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn(inner: &Arc<Inner>, name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    inner.threads.fetch_add(1, Ordering::SeqCst);
    let count = ThreadCount(inner.clone());
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _count = count;
            work();
        })
        // On failure the closure, and with it the count, is dropped.
        .map(drop)
}

fn accept_loop(inner: &Arc<Inner>, routes: &[Route]) {
    while !inner.stopped() {
        let mut fds: Vec<PollFd> =
            routes.iter().map(|route| PollFd::new(route.listener.as_fd(), PollFlags::POLLIN)).collect();
        match nix::poll::poll(&mut fds, POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => {
                eprintln!("wan: poll failed: {error}");
                std::thread::sleep(Duration::from_millis(POLL_MS.into()));
                continue;
            }
        }
        let ready: Vec<bool> =
            fds.iter().map(|fd| fd.revents().is_some_and(|events| !events.is_empty())).collect();
        drop(fds);
        for (route, _) in routes.iter().zip(ready).filter(|(_, ready)| *ready) {
            loop {
                match route.listener.accept() {
                    Ok((stream, _)) => {
                        let service = route.service.clone();
                        let worker = inner.clone();
                        let spawned = spawn(inner, "wan-conn", move || handle(&worker, stream, service));
                        if let Err(error) = spawned {
                            eprintln!("wan: cannot spawn a connection thread: {error}");
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(error) => {
                        eprintln!("wan: accept failed: {error}");
                        break;
                    }
                }
            }
        }
    }
}

fn handle(inner: &Arc<Inner>, client: TcpStream, service: Service) {
    if client.set_nonblocking(false).is_err() || client.set_nodelay(true).is_err() {
        return;
    }
    match service {
        Service::Echo => {
            let Ok(clone) = client.try_clone() else { return };
            let _token = inner.register(vec![clone]);
            echo(client);
        }
        Service::Relay { target, dial_from, delay } => {
            if dial_from.enter().is_err() {
                return;
            }
            // The SYN travels one way, the SYN-ACK back.
            std::thread::sleep(delay);
            let Ok(server) = TcpStream::connect_timeout(&target, DIAL_TIMEOUT) else { return };
            std::thread::sleep(delay);
            if inner.stopped() || server.set_nodelay(true).is_err() {
                return;
            }
            let streams = [&client, &server].map(|stream| stream.try_clone());
            let [Ok(a), Ok(b)] = streams else { return };
            let token = inner.register(vec![a, b]);
            let Ok(client_reader) = client.try_clone() else { return };
            let Ok(server_reader) = server.try_clone() else { return };
            if pump(inner, client_reader, server, delay, token.clone()).is_err() {
                return;
            }
            let _ = pump(inner, server_reader, client, delay, token);
        }
    }
}

fn echo(mut stream: TcpStream) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

enum Chunk {
    Data(Instant, Vec<u8>),
    /// The source closed its sending side.
    End(Instant),
    /// Reading the source failed.
    Abort(Instant),
}

/// Moves bytes from `source` to `sink`, each `delay` late.
fn pump(
    inner: &Arc<Inner>,
    source: TcpStream,
    sink: TcpStream,
    delay: Duration,
    token: Arc<ConnToken>,
) -> std::io::Result<()> {
    if delay.is_zero() {
        return spawn(inner, "wan-copy", move || {
            let _token = token;
            copy(source, sink);
        });
    }
    let (chunks, queue) = sync_channel::<Chunk>(QUEUE_CHUNKS);
    let source_for_writer = source.try_clone()?;
    let reader_token = token.clone();
    spawn(inner, "wan-read", move || {
        let _token = reader_token;
        read_side(source, &chunks, delay);
    })?;
    spawn(inner, "wan-write", move || {
        let _token = token;
        write_side(&queue, sink, &source_for_writer);
    })
}

fn copy(mut source: TcpStream, mut sink: TcpStream) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => {
                let _ = sink.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if sink.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = sink.shutdown(Shutdown::Both);
    let _ = source.shutdown(Shutdown::Both);
}

fn read_side(mut source: TcpStream, chunks: &SyncSender<Chunk>, delay: Duration) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let chunk = match source.read(&mut buffer) {
            Ok(0) => Chunk::End(Instant::now() + delay),
            Ok(n) => Chunk::Data(Instant::now() + delay, buffer[..n].to_vec()),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => Chunk::Abort(Instant::now() + delay),
        };
        let last = !matches!(chunk, Chunk::Data(..));
        if chunks.send(chunk).is_err() || last {
            return;
        }
    }
}

fn write_side(queue: &Receiver<Chunk>, mut sink: TcpStream, source: &TcpStream) {
    while let Ok(chunk) = queue.recv() {
        match chunk {
            Chunk::Data(due, bytes) => {
                sleep_until(due);
                if sink.write_all(&bytes).is_err() {
                    // Nobody reads any more: make the reader of this direction stop.
                    let _ = source.shutdown(Shutdown::Both);
                    let _ = sink.shutdown(Shutdown::Both);
                    return;
                }
            }
            Chunk::End(due) => {
                sleep_until(due);
                let _ = sink.shutdown(Shutdown::Write);
                return;
            }
            Chunk::Abort(due) => {
                sleep_until(due);
                let _ = sink.shutdown(Shutdown::Both);
                let _ = source.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Round trips of `bytes`-byte messages to the echo service at `target`, dialed
/// from inside `from`, after one unmeasured warm-up exchange. Runs on a thread of
/// its own (it enters `from`); every socket operation is bounded by `timeout`.
pub(crate) fn ping(
    from: Arc<Netns>,
    target: SocketAddr,
    samples: usize,
    timeout: Duration,
) -> std::io::Result<Vec<Duration>> {
    let worker = std::thread::Builder::new().name("wan-ping".to_string()).spawn(move || {
        from.enter()?;
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let message = [0x5au8; 32];
        let mut answer = [0u8; 32];
        let mut round_trips = Vec::with_capacity(samples);
        for round in 0..=samples {
            let started = Instant::now();
            stream.write_all(&message)?;
            stream.read_exact(&mut answer)?;
            if round > 0 {
                round_trips.push(started.elapsed());
            }
            if answer != message {
                return Err(std::io::Error::other("the echo answered other bytes"));
            }
        }
        Ok(round_trips)
    })?;
    worker.join().map_err(|_| std::io::Error::other("the ping thread panicked"))?
}
