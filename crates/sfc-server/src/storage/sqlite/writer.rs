//! Group commit: one thread owns the connection that writes, and commits every write
//! waiting for it in one transaction.
//!
//! With `synchronous=FULL` every commit waits for the disk (an fsync of the WAL). Many
//! clients finishing at once would otherwise queue for one fsync each behind a mutex;
//! here, while one transaction commits, the writes that arrive meanwhile queue up and
//! the next transaction takes all of them (up to [`MAX_GROUP`]) and pays one fsync.
//! Each write still returns only after the transaction holding it is durable, so what
//! the callers may promise (a 1603 after the row is on disk) is unchanged.
//!
//! Each write runs in its own savepoint: a write that fails (a name already taken) is
//! rolled back alone and does not disturb the others in its group. If SQLite rolls back
//! the whole transaction (an I/O error, a full disk), or the commit fails, every write
//! of the group is reported as failed, since none of them is stored.

use rusqlite::Connection;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Most writes committed in one transaction; bounds the work lost to one failed commit
/// and the time the first write of a large group waits.
pub const MAX_GROUP: usize = 512;

/// Told to a write after its transaction ended: `Ok` once it is durable.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One queued piece of work for the writer thread.
trait Job: Send {
    /// Runs inside the open transaction; the returned completion is called after the
    /// commit (or its failure).
    fn run(self: Box<Self>, conn: &Connection) -> Completion;
    /// The job will not run (the transaction could not start or was lost).
    fn fail(self: Box<Self>, error: String);
}

/// A closure and the channel its caller waits on.
struct Op<T, F> {
    op: F,
    reply: mpsc::SyncSender<Result<T, String>>,
}

impl<T, F> Job for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(self: Box<Self>, conn: &Connection) -> Completion {
        let Op { op, reply } = *self;
        let result = in_savepoint(conn, op);
        Box::new(move |commit: Result<(), String>| {
            let outcome = match (result, commit) {
                (Ok(value), Ok(())) => Ok(value),
                (Err(error), _) => Err(error.to_string()),
                (Ok(_), Err(error)) => Err(error),
            };
            // The caller may have gone away (it never does: it blocks on this channel).
            let _ = reply.send(outcome);
        })
    }

    fn fail(self: Box<Self>, error: String) {
        let _ = self.reply.send(Err(error));
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT write")?;
    let result = op(conn).and_then(|value| conn.execute_batch("RELEASE write").map(|()| value));
    if result.is_err() && !conn.is_autocommit() {
        // Undo this write only; the rest of the group stays.
        let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
    }
    result
}

/// How many transactions and writes the writer has committed (or tried to).
#[derive(Debug, Default)]
pub struct GroupStats {
    submitted: AtomicU64,
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl GroupStats {
    /// Writes queued so far (run or not yet).
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Transactions run so far.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Writes run so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// The handle callers use: a queue into the writer thread.
pub struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
    thread: JoinHandle<Result<(), String>>,
    stats: Arc<GroupStats>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Moves `conn` into a new writer thread.
    pub fn start(conn: Connection) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Box<dyn Job>>();
        let stats = Arc::new(GroupStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("sfc-db-writer".into())
            .spawn(move || {
                while let Ok(first) = jobs.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match jobs.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    thread_stats.transactions.fetch_add(1, Ordering::Relaxed);
                    thread_stats
                        .writes
                        .fetch_add(group.len() as u64, Ordering::Relaxed);
                    run_group(&conn, group);
                }
                // Every sender is gone: the store was closed.
                conn.close().map_err(|(_, error)| error.to_string())
            })?;
        Ok(Writer {
            queue,
            thread,
            stats,
        })
    }

    /// Queues `op` for the next group transaction; the receiver gets its result once
    /// that transaction is committed (or has failed).
    pub fn submit<T, F>(&self, op: F) -> Result<mpsc::Receiver<Result<T, String>>, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue
            .send(Box::new(Op { op, reply }))
            .map_err(|_| "the database writer has stopped".to_owned())?;
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Counters of the writer.
    pub fn stats(&self) -> Arc<GroupStats> {
        Arc::clone(&self.stats)
    }

    /// Lets the queued writes finish, stops the thread and closes the connection.
    pub fn stop(self) -> Result<(), String> {
        drop(self.queue);
        self.thread
            .join()
            .map_err(|_| "the database writer panicked".to_owned())?
    }
}

fn run_group(conn: &Connection, group: Vec<Box<dyn Job>>) {
    if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = format!("cannot start a transaction: {error}");
        for job in group {
            job.fail(message.clone());
        }
        return;
    }
    let mut completions = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut lost = None;
    for job in jobs.by_ref() {
        completions.push(job.run(conn));
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full, …): the
            // writes before this one are gone too.
            lost = Some("the database rolled the transaction back".to_owned());
            break;
        }
    }
    let commit = match lost {
        Some(message) => {
            for job in jobs {
                job.fail(message.clone());
            }
            Err(message)
        }
        None => conn
            .execute_batch("COMMIT")
            .map_err(|error| format!("commit failed: {error}")),
    };
    if commit.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for complete in completions {
        complete(commit.clone());
    }
}
