//! The worker's blocking pool: the "M" of the seeds' 1 + N + M model. A handler that
//! must block (a disk read, a DNS lookup, a slow library) hands the work here; pool
//! threads run it and post the result, and an eventfd wakes the event loop, which
//! delivers it in step 4. Threads start on first use, after fork, never in the master.

use std::any::Any;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::os::fd;
use crate::service::Job;

/// Handlers' blocking jobs: those submitted during the current callback, and the pool
/// of threads that runs them.
pub(super) struct Blocking {
    pub pool: Pool,
    /// The pool's completion fd is readable.
    pub ready: bool,
    /// Submitted by handlers, sent to the pool after each callback.
    pub jobs: Vec<Job>,
}

/// Posted in place of the result of a job that panicked.
pub struct Panicked;

type Done = Arc<Mutex<Vec<(u64, Box<dyn Any + Send>)>>>;

pub struct Pool {
    size: usize,
    tx: Option<Sender<(u64, Job)>>,
    done: Done,
    wake: Arc<OwnedFd>,
}

impl Pool {
    /// A pool of up to `size` threads; the eventfd exists from the start so the loop
    /// can watch it, the threads do not.
    pub fn new(size: usize) -> Result<Pool, crate::os::SysError> {
        Ok(Pool {
            size: size.max(1),
            tx: None,
            done: Arc::new(Mutex::new(Vec::new())),
            wake: Arc::new(fd::eventfd()?),
        })
    }

    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn start(&mut self) -> std::io::Result<Sender<(u64, Job)>> {
        let (tx, rx) = channel::<(u64, Job)>();
        let rx: Arc<Mutex<Receiver<(u64, Job)>>> = Arc::new(Mutex::new(rx));
        for i in 0..self.size {
            let rx = rx.clone();
            let done = self.done.clone();
            let wake = self.wake.clone();
            std::thread::Builder::new()
                .name(format!("corral-pool-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((token, job)) = next else { return };
                    // A panicking job must not take the worker down with it; its
                    // connection gets no result, but learns the job is over.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .unwrap_or_else(|_| Box::new(Panicked));
                    done.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((token, result));
                    let _ = fd::write(wake.as_fd(), &1u64.to_ne_bytes());
                })?;
        }
        Ok(tx)
    }

    /// Queues a job for the connection with `token`.
    pub fn submit(&mut self, token: u64, job: Job) -> std::io::Result<()> {
        if self.tx.is_none() {
            self.tx = Some(self.start()?);
        }
        match &self.tx {
            Some(tx) => tx
                .send((token, job))
                .map_err(|_| std::io::Error::other("blocking pool is gone")),
            None => Err(std::io::Error::other("blocking pool did not start")),
        }
    }

    /// Finished jobs, after the eventfd fired.
    pub fn completions(&self) -> Vec<(u64, Box<dyn Any + Send>)> {
        let mut buf = [0u8; 8];
        let _ = fd::read(self.wake.as_fd(), &mut buf);
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
