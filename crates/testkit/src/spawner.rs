//! A thread that spawns a cluster's members and lives exactly as long as the cluster.
//!
//! Linux delivers a parent-death signal when the *thread* that forked a child exits,
//! not the process. Spawning from whatever thread a test happens to run on would kill a
//! member when, say, a tokio blocking thread retires. One dedicated thread per cluster
//! makes the signal fire when the cluster goes away, or when the test process dies.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = (Command, mpsc::Sender<io::Result<Child>>);

pub(crate) struct Spawner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(crate) fn new() -> io::Result<Spawner> {
        let (jobs, incoming) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("testkit-spawner".to_string()).spawn(move || {
            for (mut command, reply) in incoming {
                // The receiver only goes away if the caller panicked; nothing to do then.
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { jobs: Some(jobs), thread: Some(thread) })
    }

    pub(crate) fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, result) = mpsc::channel();
        let gone = || io::Error::other("the spawner thread is gone");
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send((command, reply)).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
