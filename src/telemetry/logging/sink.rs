//! Where log lines go: stderr, written in batches. Access lines (one per request) are appended
//! to a buffer and written when it holds [`BATCH`] bytes, every [`INTERVAL`] from a small
//! background thread, and at exit ([`super::LogGuard`]); any other line is written at once,
//! together with the access lines before it, so lines keep their order and what operators
//! need to see now is never delayed. One write of many lines costs about what one line did:
//! the sidecar used to spend a write(2) — and the wake-up of whatever reads its stderr — per
//! request (docs/benchmarks.md).
//!
//! A write that fails (the reader of stderr went away) is dropped silently: logging must
//! never stop the sidecar from serving or from shutting down. A reader that is slow makes
//! writers wait, as before; at most two batches are in memory meanwhile.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

/// Bytes of access lines gathered before they are written.
pub const BATCH: usize = 32 * 1024;
/// Longest an access line waits in the buffer.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// A batching line writer over `out`.
pub struct Sink {
    pending: Mutex<Vec<u8>>,
    /// Taken while `pending` is still held, then written without it: batches leave in the
    /// order they were filled, and lines can be appended while one is being written.
    out: Mutex<Box<dyn Write + Send>>,
    flusher: Once,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    pub fn new(out: Box<dyn Write + Send>) -> Sink {
        Sink {
            pending: Mutex::new(Vec::with_capacity(BATCH)),
            out: Mutex::new(out),
            flusher: Once::new(),
        }
    }

    /// Appends one line (or several). `defer`: it may wait for the batch; otherwise it is
    /// written now, after everything appended before it.
    pub fn append(&self, line: &[u8], defer: bool) {
        let mut pending = lock(&self.pending);
        pending.extend_from_slice(line);
        if !defer || pending.len() >= BATCH {
            self.write_out(pending);
        }
    }

    /// Writes whatever is buffered.
    pub fn flush(&self) {
        let pending = lock(&self.pending);
        if !pending.is_empty() {
            self.write_out(pending);
        }
    }

    fn write_out(&self, mut pending: MutexGuard<'_, Vec<u8>>) {
        let batch = std::mem::replace(&mut *pending, Vec::with_capacity(BATCH));
        let mut out = lock(&self.out);
        drop(pending);
        // Errors are dropped on purpose (see the module doc).
        let _ = out.write_all(&batch).and_then(|()| out.flush());
    }

    /// Starts the thread that writes deferred lines at least every [`INTERVAL`] (once).
    pub fn start_flusher(&'static self) {
        self.flusher.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(INTERVAL);
                        self.flush();
                    }
                });
        });
    }
}

/// One line on its way to a [`Sink`] (tracing-subscriber writes each formatted event with a
/// single `write_all`).
pub struct LineWriter<'a> {
    pub sink: &'a Sink,
    pub defer: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.append(buf, self.defer);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An `out` that keeps what was written and counts the writes.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut o = lock(&self.0);
            o.0.extend_from_slice(buf);
            o.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Out {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0).0).into_owned()
        }
        fn writes(&self) -> usize {
            lock(&self.0).1
        }
    }

    #[test]
    fn deferred_lines_wait_for_a_flush_or_an_urgent_line_and_keep_their_order() {
        let out = Out::default();
        let sink = Sink::new(Box::new(out.clone()));
        sink.append(b"a1\n", true);
        sink.append(b"a2\n", true);
        assert_eq!(out.text(), "", "access lines are batched");
        sink.append(b"warn\n", false);
        assert_eq!(
            out.text(),
            "a1\na2\nwarn\n",
            "written with the urgent line, in order"
        );
        assert_eq!(out.writes(), 1, "in one write");
        sink.append(b"a3\n", true);
        sink.flush();
        assert_eq!(out.text(), "a1\na2\nwarn\na3\n");
        sink.flush();
        assert_eq!(out.writes(), 2, "nothing to flush: no write");
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let out = Out::default();
        let sink = Sink::new(Box::new(out.clone()));
        let line = [b'x'; 1000];
        for _ in 0..BATCH / 1000 + 1 {
            sink.append(&line, true);
        }
        assert!(out.text().len() >= BATCH);
        assert_eq!(out.writes(), 1);
    }

    #[test]
    fn a_failing_output_is_ignored() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::new(Box::new(Broken));
        let mut w = LineWriter {
            sink: &sink,
            defer: false,
        };
        assert!(
            w.write_all(b"line\n").is_ok(),
            "tracing never sees the error"
        );
    }
}
