//! Bounded retry with backoff for transient I/O errors: a network filesystem that times out, a
//! file another process holds busy, an interrupted call. Only operations that can be repeated
//! without side effects go through here (opening and mapping inputs, reading small files, an
//! atomic write, which starts from a fresh temporary each time). A permanent error (missing
//! file, permission, bad data) is returned at once: retrying it would only delay the message.

use std::io;
use std::path::Path;
use std::time::Duration;

/// Tries per operation, the first included.
pub const ATTEMPTS: u32 = 4;
/// The wait before the second try; each further wait is four times longer (50, 200, 800 ms).
const FIRST_DELAY: Duration = Duration::from_millis(50);

/// Whether `error` may go away by itself.
pub fn is_transient(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(error.kind(), Interrupted | WouldBlock | TimedOut | ResourceBusy) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = error.raw_os_error() {
        // ESTALE: an NFS handle that a retry reopens; ETXTBSY: a file still open for writing.
        return [libc::EAGAIN, libc::EINTR, libc::EBUSY, libc::ETIMEDOUT, libc::ESTALE, libc::ETXTBSY]
            .contains(&code);
    }
    false
}

/// Runs `op` until it succeeds, fails permanently, or has failed transiently [`ATTEMPTS`] times.
/// `what` names the file in the log lines. The test-only fault point `transient-io` (with
/// `MODEL_EXPORT_FAULT_SIGNAL=ERROR`) makes one try fail with EAGAIN.
pub fn io<T>(what: &Path, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut delay = FIRST_DELAY;
    let mut attempt = 1;
    loop {
        let result = if crate::hooks::fails("transient-io") {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        } else {
            op()
        };
        match result {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tracing::warn!(
                    "{}: {e} (transient); retrying in {} ms ({attempt}/{})",
                    what.display(),
                    delay.as_millis(),
                    ATTEMPTS - 1
                );
                std::thread::sleep(delay);
                delay *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `std::fs::read` with retries.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    io(path, || std::fs::read(path))
}

/// `std::fs::read_to_string` with retries.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    io(path, || std::fs::read_to_string(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn failing(times: u32, kind: io::ErrorKind) -> (Cell<u32>, impl Fn(&Cell<u32>) -> io::Result<u32>) {
        let calls = Cell::new(0);
        let op = move |calls: &Cell<u32>| {
            calls.set(calls.get() + 1);
            if calls.get() <= times { Err(io::Error::from(kind)) } else { Ok(calls.get()) }
        };
        (calls, op)
    }

    #[test]
    fn transient_errors_are_retried_until_they_pass() {
        let (calls, op) = failing(2, io::ErrorKind::TimedOut);
        assert_eq!(io(Path::new("x"), || op(&calls)).unwrap(), 3);
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn retries_are_bounded() {
        let (calls, op) = failing(10, io::ErrorKind::ResourceBusy);
        let err = io(Path::new("x"), || op(&calls)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        assert_eq!(calls.get(), ATTEMPTS);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let (calls, op) = failing(1, io::ErrorKind::NotFound);
        assert_eq!(io(Path::new("x"), || op(&calls)).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(calls.get(), 1);
        assert!(!is_transient(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(is_transient(&io::Error::from_raw_os_error(libc::ESTALE)));
    }
}
