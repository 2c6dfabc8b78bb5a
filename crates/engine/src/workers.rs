//! Worker threads for the RaptorQ work the protocol loops hand out (the client's decodes, the
//! master's encoder builds): a job costs milliseconds, which a loop that reads the socket or
//! paces the sends cannot spend at line rate.

use crossbeam_channel::{Receiver, Sender};

use crate::EngineError;

/// Jobs in, results out; the threads end when the pool is dropped.
pub(crate) struct Workers<J, R> {
    pub(crate) work: Sender<J>,
    pub(crate) done: Receiver<R>,
}

impl<J: Send + 'static, R: Send + 'static> Workers<J, R> {
    /// Starts `threads` (at least one) threads named `name-N` that run `run` on each job.
    pub(crate) fn start(name: &str, threads: usize, run: fn(J) -> R) -> Result<Self, EngineError> {
        let (work, jobs) = crossbeam_channel::unbounded::<J>();
        let (results, done) = crossbeam_channel::unbounded();
        for i in 0..threads.max(1) {
            let (jobs, results) = (jobs.clone(), results.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Bulk work: the loop that paces or receives goes first when it wakes.
                    imgcast_disk::lower_thread_priority();
                    for job in jobs {
                        if results.send(run(job)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| EngineError::io(format!("starting the {name} threads"), e))?;
        }
        Ok(Self { work, done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_comes_back_and_the_threads_end_with_the_pool() {
        let w = Workers::start("imgcast-test", 2, |x: u32| x * 2).unwrap();
        for i in 0..10 {
            w.work.send(i).unwrap();
        }
        let mut got: Vec<u32> = (0..10).map(|_| w.done.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        let Workers { work, done } = w;
        drop(work);
        assert!(done.recv().is_err(), "the threads ended");
    }
}
