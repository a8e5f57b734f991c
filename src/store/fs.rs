//! Reading files in the data dir as untrusted input: a session directory or file may have been
//! replaced by a symbolic link (to make rwkv-chat write somewhere else), a FIFO (to hang it) or
//! a huge sparse file (to make it allocate gigabytes). So nothing here follows a link, opens
//! anything but a regular file, or reads more than a valid file of its kind can hold.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Why a file was refused before its contents were looked at.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("not found")]
    NotFound,
    #[error("is a symbolic link; rwkv-chat does not follow links inside its data directory")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error("is {size} bytes, more than a valid one can be ({max} bytes at most)")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound,
            _ if is_loop(&e) => Self::Symlink,
            _ => Self::Io(e),
        }
    }
}

/// `O_NOFOLLOW` on a link fails with `ELOOP`.
fn is_loop(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Refuses `path` when it is a symbolic link; a missing path is fine (it will be created).
pub fn refuse_symlink(path: &Path) -> Result<(), FileError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::Io(e)),
    }
}

/// Options that never follow a final symbolic link and never block on a FIFO.
pub fn no_follow(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
    }
    #[cfg(not(unix))]
    {
        options
    }
}

/// Opens a regular file for reading, refusing links, FIFOs, devices and files over `max`
/// bytes. Returns the file and its size.
pub fn open_regular(path: &Path, max: u64) -> Result<(File, u64), FileError> {
    let file = no_follow(std::fs::OpenOptions::new().read(true)).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular);
    }
    if meta.len() > max {
        return Err(FileError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    Ok((file, meta.len()))
}

/// The whole of a regular file of at most `max` bytes. A file that grows past `max` while it
/// is read is refused too.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_big_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"hello").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(read_regular(&link, 100), Err(FileError::Symlink)));
        assert!(matches!(refuse_symlink(&link), Err(FileError::Symlink)));
        assert!(refuse_symlink(&target).is_ok());
        assert!(refuse_symlink(&dir.path().join("missing")).is_ok());

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_regular(&fifo, 100),
            Err(FileError::NotRegular)
        ));

        assert!(matches!(
            read_regular(&target, 4),
            Err(FileError::TooLarge { size: 5, max: 4 })
        ));
        assert_eq!(read_regular(&target, 5).unwrap(), b"hello");
        assert!(matches!(
            read_regular(&dir.path().join("missing"), 5),
            Err(FileError::NotFound)
        ));
    }
}
