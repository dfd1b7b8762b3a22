//! A large output file written in one pass: under a temporary name beside its destination,
//! hashed (SHA-256) while it is written, with writeback started as it goes so the final fsync
//! is short, then synced, made world-readable and renamed into place. A file that is dropped
//! unfinished disappears.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

/// A finished file with the size and SHA-256 of its bytes, as the manifest records them.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Hashes each large write on a second thread while the write itself proceeds, so the
/// manifest's SHA-256 costs no extra pass over the data.
struct HashingFile {
    file: NamedTempFile,
    hasher: Sha256,
    written: u64,
    flushed: u64,
}

/// Start writeback every so many bytes, so the final fsync does not wait for the whole file.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Asks the kernel to begin writing a range to disk now, without waiting (Linux only).
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor and a range within what was written; the call only
        // schedules I/O and touches no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `MODEL_EXPORT_FAULT=disk-full` with `MODEL_EXPORT_FAULT_SIGNAL=ERROR`: a full disk
        // wherever no small filesystem can be mounted for the test.
        #[cfg(unix)]
        if crate::hooks::fails("disk-full") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let (file, hasher) = (&mut self.file, &mut self.hasher);
        if buf.len() >= 1 << 20 {
            let (written, ()) = rayon::join(|| file.write_all(buf), || hasher.update(buf));
            written?;
        } else {
            file.write_all(buf)?;
            hasher.update(buf);
        }
        self.written += buf.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            start_writeback(self.file.as_file(), self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

pub struct StreamingFile {
    path: PathBuf,
    out: BufWriter<HashingFile>,
}

impl StreamingFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir)?;
        let hashing = HashingFile { file, hasher: Sha256::new(), written: 0, flushed: 0 };
        Ok(Self { path: path.to_path_buf(), out: BufWriter::with_capacity(8 << 20, hashing) })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.out.get_ref().written + self.out.buffer().len() as u64
    }

    /// Syncs, renames into place, and returns the file's size and hash.
    pub fn finish(self) -> std::io::Result<WrittenFile> {
        let hashing = self.out.into_inner().map_err(|e| e.into_error())?;
        let (file, size, sha256) =
            (hashing.file, hashing.written, format!("{:x}", hashing.hasher.finalize()));
        file.as_file().sync_all()?;
        crate::fsutil::make_shareable(file.as_file())?;
        file.persist(&self.path).map_err(|e| e.error)?;
        Ok(WrittenFile { path: self.path, size, sha256 })
    }
}
