//! The persistent-connection pipeline: three threads per send.
//!
//! A reader thread reads and checksums the file into a few reused [`READ_CHUNK`] buffers;
//! the calling thread encrypts each packet straight behind its prefix into batches of about
//! [`BATCH`] bytes; a writer thread writes the previous batch with one
//! [`write_request`] (the batch taken at the least rate, each write making progress
//! within the time-out). The buffers are handed back for the next send, so memory stays
//! flat.

use std::io;
use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use super::buffer::ReadBuffer;
use super::packets::{
    buffer_error, packet_room, Chunk, FileReader, PacketSource, ReaderFeed, READ_BUFFERS,
};
use super::{trace_packet, BATCH};
use crate::connection::write_request;
use crate::error::ClientError;
use crate::progress::Reporter;
use crate::tls::Stream;

/// Why [`write_pipelined`] stopped.
#[derive(Debug)]
pub(crate) enum PipeError {
    /// Reading or encrypting the file failed.
    Source(ClientError),
    /// Writing to the connection failed.
    Write(io::Error),
}

/// A batch of packets for the writer thread: the buffer and how many bytes of it count.
type Batch = (Vec<u8>, usize);

/// What the errors call one batch the writer thread writes.
const BATCH_NAME: &str = "batch of file packets";

/// Writes the file's packets (after `resend`, a 901, if given) to `stream`, each batch
/// taken by the server within `timeout` plus `timeout` per 64 KiB of it (the least rate
/// of [`write_request`]), and every write making progress within `timeout`. The two
/// batch buffers are initialised once and handed back for the next send, as are the
/// plaintext buffers (in the source's pool).
pub(crate) fn write_pipelined(
    stream: &mut Stream,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    (first, second): (&mut Vec<u8>, &mut Vec<u8>),
    resend: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), PipeError> {
    let head = resend.map_or(0, <[u8]>::len);
    let capacity = BATCH + head + packet_room(&source.plan);
    let mut batch = std::mem::take(first);
    let mut spare = Some(std::mem::take(second));
    for buf in [Some(&mut batch), spare.as_mut()].into_iter().flatten() {
        if buf.len() < capacity {
            buf.resize(capacity, 0);
        }
    }
    let Some(reader) = source.reader.take() else {
        return Err(PipeError::Source(ClientError::Internal(
            "the file is not open".to_owned(),
        )));
    };
    let (produced, written, read_ok, returned) = std::thread::scope(|scope| {
        let reading = spawn_reader(scope, reader, source);
        let (full_tx, empty_rx, writer) = spawn_writer(scope, stream, timeout);
        let produced = produce(
            source,
            reporter,
            (&mut batch, &mut spare),
            (&full_tx, &empty_rx),
            resend,
        );
        drop(full_tx);
        let written = writer.join();
        let returned = empty_rx.try_iter().next();
        let read_ok = reclaim_reader(source, reading);
        (produced, written, read_ok, returned)
    });
    // Keep the buffers for the next send.
    *first = batch;
    if let Some(buf) = spare.or(returned) {
        *second = buf;
    }
    match (produced, written) {
        (_, Ok(Err(error))) => Err(PipeError::Write(error)),
        (Err(e), _) => Err(PipeError::Source(e)),
        (Ok(()), Ok(Ok(()))) if read_ok => Ok(()),
        (Ok(()), Ok(Ok(()))) => Err(PipeError::Source(ClientError::Internal(
            "the file reader thread failed".to_owned(),
        ))),
        (Ok(()), Err(_)) => Err(PipeError::Source(ClientError::Internal(
            "the writer thread failed".to_owned(),
        ))),
    }
}

/// Writes the file's packets (after `resend`, a 901, if given) one request per write,
/// pausing `pause` after each (`--pace`): for servers that read each field with a single
/// `recv()` and lose track when a read comes back short. With TCP_NODELAY (always set) a
/// packet that fits one TCP segment then arrives whole, and the pause lets the server
/// take it before the next one comes. Each request is taken within `timeout` (plus
/// `timeout` per 64 KiB of it), as with one connection per request.
pub(crate) fn write_paced(
    stream: &mut Stream,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    out: &mut Vec<u8>,
    resend: Option<&[u8]>,
    (pause, timeout): (Duration, Duration),
) -> Result<(), PipeError> {
    if let Some(bytes) = resend {
        write_request(stream, bytes, timeout, "request").map_err(PipeError::Write)?;
        std::thread::sleep(pause);
    }
    let total = source.plan.total_packets;
    loop {
        out.clear();
        let Some(info) = source.next_into(out).map_err(PipeError::Source)? else {
            return Ok(());
        };
        trace_packet(reporter, &info, total);
        write_request(stream, out, timeout, "request").map_err(PipeError::Write)?;
        reporter.set_progress(source.sent);
        if !info.last {
            std::thread::sleep(pause);
        }
    }
}

/// What the reader thread gives back: the reader (with its checksum) and the channel of
/// buffers it had not taken yet.
type ReaderEnd<'a> = (FileReader<'a>, mpsc::Receiver<ReadBuffer>);

/// Starts the reader thread: it fills free buffers, in file order, until the planned size
/// is read. The source gets the channel ends.
fn spawn_reader<'scope, 'env, 'a: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    mut reader: FileReader<'a>,
    source: &mut PacketSource<'_>,
) -> ScopedJoinHandle<'scope, ReaderEnd<'a>> {
    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Chunk>(READ_BUFFERS);
    let (free_tx, free_rx) = mpsc::channel::<ReadBuffer>();
    source
        .pool
        .resize_with(READ_BUFFERS - 1, ReadBuffer::default);
    for buf in source.pool.drain(..) {
        let _ = free_tx.send(buf);
    }
    let reading = scope.spawn(move || {
        while reader.remaining > 0 {
            let Ok(mut buf) = free_rx.recv() else {
                break;
            };
            let chunk = reader.read_chunk(&mut buf).map(|n| (buf, n));
            let failed = chunk.is_err();
            if chunk_tx.send(chunk).is_err() || failed {
                break;
            }
        }
        (reader, free_rx)
    });
    source.feed = Some(ReaderFeed {
        full: chunk_rx,
        free: free_tx,
    });
    reading
}

/// Starts the writer thread: it writes full batches and hands the buffers back.
fn spawn_writer<'scope, 'env, 's: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    stream: &'s mut Stream,
    timeout: Duration,
) -> (
    mpsc::SyncSender<Batch>,
    mpsc::Receiver<Vec<u8>>,
    ScopedJoinHandle<'scope, io::Result<()>>,
) {
    let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(0);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    let writer = scope.spawn(move || -> io::Result<()> {
        for (buf, len) in full_rx {
            write_request(
                stream,
                buf.get(..len).unwrap_or_default(),
                timeout,
                BATCH_NAME,
            )?;
            // A refusal already there: the rest would be dropped unread (rule S12). The
            // caller finds the 1607 among the replies that arrived.
            if stream.refusal_waiting()? {
                return Err(io::Error::other(
                    "the server refused the upload while it was being sent (1607)",
                ));
            }
            if empty_tx.send(buf).is_err() {
                break;
            }
        }
        Ok(())
    });
    (full_tx, empty_rx, writer)
}

/// This thread's part: prefixes and encryption into `batch`, handing each full batch to
/// the writer and taking the next buffer from `spare` or back from the writer.
fn produce(
    source: &mut PacketSource<'_>,
    reporter: &Reporter,
    (batch, spare): (&mut Vec<u8>, &mut Option<Vec<u8>>),
    (full_tx, empty_rx): (&mpsc::SyncSender<Batch>, &mpsc::Receiver<Vec<u8>>),
    resend: Option<&[u8]>,
) -> Result<(), ClientError> {
    let total = source.plan.total_packets;
    let mut filled = 0;
    if let Some(bytes) = resend {
        batch
            .get_mut(..bytes.len())
            .ok_or_else(buffer_error)?
            .copy_from_slice(bytes);
        filled = bytes.len();
    }
    while let Some(info) = source.next_packet(batch, &mut filled)? {
        trace_packet(reporter, &info, total);
        if filled >= BATCH || info.last {
            let next = match spare.take() {
                Some(buf) => buf,
                // The writer hands every buffer back unless it failed.
                None => match empty_rx.recv() {
                    Ok(buf) => buf,
                    Err(_) => return Ok(()),
                },
            };
            let full = std::mem::replace(batch, next);
            if full_tx.send((full, filled)).is_err() {
                // The writer stopped on an error; it is reported by the caller.
                return Ok(());
            }
            filled = 0;
            reporter.set_progress(source.sent);
        }
    }
    Ok(())
}

/// Stops the reader (it has finished unless something failed), takes back the plaintext
/// buffers it holds or had queued, and gives the source its reader back. False when the
/// reader thread panicked.
fn reclaim_reader<'a>(
    source: &mut PacketSource<'a>,
    reading: ScopedJoinHandle<'_, ReaderEnd<'a>>,
) -> bool {
    if let Some(feed) = source.feed.take() {
        for (buf, _) in feed.full.try_iter().flatten() {
            source.pool.push(buf);
        }
        drop(feed);
    }
    let read = reading.join();
    let ok = match read {
        Ok((reader, free_rx)) => {
            source.pool.extend(free_rx.try_iter());
            source.reader = Some(reader);
            true
        }
        Err(_) => false,
    };
    source.pool.truncate(READ_BUFFERS - 1);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::plan::{plan, requested, PacketSizing};
    use sfc_crypto::AesKey;
    use sfc_proto::{ClientId, Name};
    use std::io::Read;

    /// The pipelined path (reader thread, encryption into batches, writer thread) puts the
    /// same bytes on the wire as the packets made in one thread, also when the buffers are
    /// reused by a second send, and reports a file that shrinks.
    #[test]
    fn pipelined_writes_the_same_bytes() {
        use std::net::{TcpListener, TcpStream};
        let dir = tempfile::tempdir().unwrap();
        let key = AesKey::random();
        let label = Name::new("f.bin").unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let (mut chunk, mut pool) = (ReadBuffer::default(), Vec::new());
        for (size, packet) in [
            (0usize, None),
            (5000, Some(1000)),
            (3_000_000, Some(7777)),
            (3_000_000, None),
            (2_500_000, Some(1 << 20)),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let path = dir.path().join("f.bin");
            std::fs::write(&path, &data).unwrap();
            let p = plan(size as u64, requested(packet)).unwrap();
            let (mut rb, mut pl, mut expected) =
                (ReadBuffer::default(), Vec::new(), b"resend".to_vec());
            let mut source =
                PacketSource::open(&path, &label, ClientId([3; 16]), &key, p, &mut rb, &mut pl)
                    .unwrap();
            while source.next_into(&mut expected).unwrap().is_some() {}

            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).unwrap();
                got
            });
            let mut stream = Stream::Plain(TcpStream::connect(addr).unwrap());
            let mut source = PacketSource::open(
                &path,
                &label,
                ClientId([3; 16]),
                &key,
                p,
                &mut chunk,
                &mut pool,
            )
            .unwrap();
            let result = write_pipelined(
                &mut stream,
                &Reporter::quiet(),
                &mut source,
                (&mut first, &mut second),
                Some(b"resend"),
                Duration::from_secs(30),
            );
            assert!(result.is_ok(), "size {size}");
            assert_eq!(source.checksum(), sfc_crypto::cksum(&data));
            drop(source);
            drop(stream);
            assert!(server.join().unwrap() == expected, "size {size}");
            assert!(pool.len() < READ_BUFFERS);
        }

        // A file shorter than planned.
        let path = dir.path().join("short.bin");
        std::fs::write(&path, vec![1u8; 3_000_000]).unwrap();
        let p = plan(5_000_000, PacketSizing::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
        });
        let mut stream = Stream::Plain(TcpStream::connect(addr).unwrap());
        let mut source = PacketSource::open(
            &path,
            &label,
            ClientId::ZERO,
            &key,
            p,
            &mut chunk,
            &mut pool,
        )
        .unwrap();
        let result = write_pipelined(
            &mut stream,
            &Reporter::quiet(),
            &mut source,
            (&mut first, &mut second),
            None,
            Duration::from_secs(30),
        );
        match result {
            Err(PipeError::Source(e)) => assert!(e.to_string().contains("shorter"), "{e}"),
            _ => panic!("a shrunk file was sent"),
        }
        drop(stream);
        server.join().unwrap();
    }

    /// A server that keeps taking the upload, each write making progress within the
    /// time-out, but far below the least rate (64 KiB per time-out): a batch not taken
    /// within its allowance ends the send, as a request does with one connection per
    /// request. (Small socket buffers, so that the kernel wakes the blocked writer often.)
    #[test]
    fn a_server_taking_the_upload_below_the_least_rate_is_a_time_out() {
        use rustix::net::sockopt;
        use std::net::{TcpListener, TcpStream};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![5u8; 3 << 20]).unwrap();
        let p = plan(3 << 20, PacketSizing::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        sockopt::set_socket_recv_buffer_size(&listener, 8 << 10).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut piece = vec![0u8; 4 << 10];
            // 80 KiB/s: a write goes on every few tens of ms, a third of the least rate of
            // a 0.25 s time-out (256 KiB/s).
            while matches!(
                stopped.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Empty)
            ) {
                match conn.read(&mut piece) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        let tcp = TcpStream::connect(addr).unwrap();
        sockopt::set_socket_send_buffer_size(&tcp, 8 << 10).unwrap();
        let mut stream = Stream::Plain(tcp);
        let (mut chunk, mut pool) = (ReadBuffer::default(), Vec::new());
        let mut source = PacketSource::open(
            &path,
            &Name::new("f.bin").unwrap(),
            ClientId::ZERO,
            &AesKey::random(),
            p,
            &mut chunk,
            &mut pool,
        )
        .unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let started = std::time::Instant::now();
        let result = write_pipelined(
            &mut stream,
            &Reporter::quiet(),
            &mut source,
            (&mut first, &mut second),
            None,
            Duration::from_millis(250),
        );
        let took = started.elapsed();
        drop(stop);
        drop(stream);
        server.join().unwrap();
        let Err(PipeError::Write(e)) = result else {
            panic!("a send below the least rate went through ({took:?})");
        };
        let text = e.to_string();
        assert!(
            text.contains("did not take the whole batch of file packets (1.0 MiB)"),
            "{text}"
        );
        assert!(text.contains("for each 64 KiB of it"), "{text}");
    }
}
