//! `hivemind app exec`: a command in a running container, as `docker exec`. With `-i` this
//! stdin goes to it; with `-t` it runs on a terminal, this one switched to raw mode and its
//! size followed. The command's exit status is this one's.

use std::{
    io::{IsTerminal as _, Read as _},
    os::fd::AsFd,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Args;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use crate::proto::{self, containers_client::ContainersClient};

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    pub container_id: String,
    /// Send this stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal (with -i, this terminal's keys go to it as typed).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for the command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user instead of the container's: NAME, UID, NAME:GROUP, UID:GID.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Run in this directory instead of the container's working directory.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn run(
    containers: &mut ContainersClient<super::client::Transport>,
    args: &ExecArgs,
) -> anyhow::Result<ExitCode> {
    let keyboard = args.interactive && args.tty;
    if keyboard && !std::io::stdin().is_terminal() {
        anyhow::bail!("the input is not a terminal: -it needs one (use -i alone to pipe input in)");
    }
    let start = proto::ExecStart {
        container_id: args.container_id.clone(),
        args: args.command.clone(),
        tty: args.tty,
        stdin: args.interactive,
        size: args.tty.then(terminal_size).flatten(),
        env: args.env.clone(),
        user: args.user.clone().unwrap_or_default(),
        workdir: args.workdir.clone().unwrap_or_default(),
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(proto::ExecInput {
        start: Some(start),
        ..Default::default()
    })
    .await
    .context("starting the exec")?;
    if args.interactive {
        send_stdin(tx.clone());
    }
    if args.tty {
        follow_size(tx.clone());
    }
    drop(tx);

    // Raw from here to the end (the guard restores the terminal, on errors too).
    let raw = if keyboard {
        Some(RawMode::enter().context("switching the terminal to raw mode")?)
    } else {
        None
    };
    let mut stream = containers.exec(ReceiverStream::new(rx)).await?.into_inner();
    let mut status = None;
    while let Some(message) = stream.next().await {
        let message = message?;
        write(&mut std::io::stdout(), &message.stdout).context("writing to stdout")?;
        write(&mut std::io::stderr(), &message.stderr).context("writing to stderr")?;
        if message.exit_code.is_some() {
            status = message.exit_code;
            break;
        }
    }
    drop(raw);
    let status = status.context("the exec ended without an exit status")?;
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)))
}

fn write(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    out.write_all(bytes)?;
    out.flush()
}

/// Stdin, read in a thread of its own (a read blocks, and a runtime must not wait for it at
/// exit), then its end.
fn send_stdin(tx: mpsc::Sender<proto::ExecInput>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let message = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => proto::ExecInput {
                    close_stdin: true,
                    ..Default::default()
                },
                Ok(n) => proto::ExecInput {
                    stdin: buf[..n].to_vec(),
                    ..Default::default()
                },
            };
            let last = message.close_stdin;
            if tx.blocking_send(message).is_err() || last {
                return;
            }
        }
    });
}

/// Every change of this terminal's size (SIGWINCH), passed on.
fn follow_size(tx: mpsc::Sender<proto::ExecInput>) {
    let Ok(mut changes) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let Some(size) = terminal_size() else {
                continue;
            };
            let resize = proto::ExecInput {
                resize: Some(size),
                ..Default::default()
            };
            if tx.send(resize).await.is_err() {
                return;
            }
        }
    });
}

/// The size of the terminal on stdin, or else on stdout.
fn terminal_size() -> Option<proto::TerminalSize> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        .find_map(|fd| {
            let mut size = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which lives
            // for the call; on a descriptor that is no terminal it fails and writes nothing.
            let done = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &raw mut size) };
            (done == 0 && size.ws_col > 0 && size.ws_row > 0).then(|| proto::TerminalSize {
                width: u32::from(size.ws_col),
                height: u32::from(size.ws_row),
            })
        })
}

/// This terminal in raw mode (keys pass as typed, no local echo) while it lives.
struct RawMode {
    saved: Termios,
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawMode")
    }
}

impl RawMode {
    fn enter() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
