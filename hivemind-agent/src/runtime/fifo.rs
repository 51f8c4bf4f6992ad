//! The named pipes an attached exec's stdio goes through, as `ctr` uses them: the agent
//! creates them, opens its ends first, and passes their paths to containerd, whose shim opens
//! the other ends when the process starts.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use nix::{sys::stat::Mode, unistd::mkfifo};
use tokio::{io::AsyncReadExt as _, net::unix::pipe, sync::mpsc, task::JoinHandle};

/// One exec's pipes in a directory of their own, removed on drop.
#[derive(Debug)]
pub struct Fifos {
    dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    /// None with a terminal: its output is one stream.
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    pub fn create(dir: &Path, stdin: bool, tty: bool) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let made = |name: &str| -> io::Result<PathBuf> {
            let path = dir.join(name);
            mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(io::Error::from)?;
            Ok(path)
        };
        // From here on a failure removes what was made (the drop).
        let mut fifos = Self {
            dir: dir.to_owned(),
            stdin: None,
            stdout: PathBuf::new(),
            stderr: None,
        };
        fifos.stdout = made("stdout")?;
        if !tty {
            fifos.stderr = Some(made("stderr")?);
        }
        if stdin {
            fifos.stdin = Some(made("stdin")?);
        }
        Ok(fifos)
    }

    /// The writing end of stdin. Opened read-write, so the open never waits for the shim and
    /// the pipe never reports a missing reader; the shim reads end of file once it is dropped.
    pub fn open_stdin(&self) -> io::Result<Option<pipe::Sender>> {
        self.stdin
            .as_deref()
            .map(|path| pipe::OpenOptions::new().read_write(true).open_sender(path))
            .transpose()
    }

    /// Wakes every reader still waiting for the shim to open its end (it never will: the exec
    /// failed, or the process has ended) by opening and closing a writing end itself.
    pub fn release_readers(&self) {
        for path in std::iter::once(&self.stdout).chain(&self.stderr) {
            let _ = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        }
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Copies what the shim writes into `path` to `out`, each chunk wrapped by `wrap`, until the
/// shim closes its end (the process and everything it started closed that stream) or `out`
/// is gone. The open waits for the shim in a blocking thread, as a FIFO's open does.
pub fn forward<T: Send + 'static>(
    path: PathBuf,
    out: mpsc::Sender<T>,
    wrap: fn(Vec<u8>) -> T,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(async move {
        let file = tokio::task::spawn_blocking(move || File::open(path))
            .await
            .map_err(io::Error::other)??;
        let mut reader = pipe::Receiver::from_file(file)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 || out.send(wrap(buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    })
}
