//! `app exec`: a process in a running container, its stdio streamed to and from the caller,
//! its exit code the stream's last message. A container on another node is exec'd by that
//! node; this one relays both streams.

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use super::AgentService;
use crate::{
    api::error::ApiError,
    proto,
    runtime::exec_attached::{AttachedExec, ExecInput, ExecOutput, TerminalSize},
    validate,
};

/// What the caller reads: output, then the exit code (or an error).
pub type ExecStream = ReceiverStream<Result<proto::ExecOutput, ApiError>>;

impl AgentService {
    /// Starts `start` in its container; `input` is the rest of the caller's stream.
    pub async fn exec(
        &self,
        start: proto::ExecStart,
        input: impl Stream<Item = proto::ExecInput> + Send + Unpin + 'static,
    ) -> Result<ExecStream, ApiError> {
        let record = self.existing_container(&start.container_id).await?;
        let request = attached(&start)?;
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        if self.is_remote(&record) {
            tokio::spawn(async move {
                if let Err(err) = service.remote_exec(&record, start, input, &tx).await {
                    let _ = tx.send(Err(err)).await;
                }
            });
        } else {
            tokio::spawn(async move { service.local_exec(&record.id, request, input, tx).await });
        }
        Ok(ReceiverStream::new(rx))
    }

    async fn local_exec(
        &self,
        id: &str,
        request: AttachedExec,
        mut input: impl Stream<Item = proto::ExecInput> + Send + Unpin + 'static,
        tx: mpsc::Sender<Result<proto::ExecOutput, ApiError>>,
    ) {
        let exec_id = format!("exec-{:08x}", fastrand::u32(..));
        let dir = self.parts().containers_dir.join(id).join(&exec_id);
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(message) = input.next().await {
                for item in inputs(message) {
                    if in_tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        let relay_tx = tx.clone();
        let relay = async move {
            loop {
                let chunk = tokio::select! {
                    chunk = out_rx.recv() => chunk,
                    // The caller went away: dropping `out_rx` tells the runtime to kill.
                    () = relay_tx.closed() => None,
                };
                let Some(chunk) = chunk else { return };
                let message = match chunk {
                    ExecOutput::Stdout(stdout) => proto::ExecOutput {
                        stdout,
                        ..Default::default()
                    },
                    ExecOutput::Stderr(stderr) => proto::ExecOutput {
                        stderr,
                        ..Default::default()
                    },
                };
                if relay_tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        };
        let runtime = &self.parts().runtime;
        let run = runtime.exec_attached(id, &exec_id, &dir, &request, in_rx, out_tx);
        let (status, ()) = tokio::join!(run, relay);
        let last = status
            .map(|code| proto::ExecOutput {
                exit_code: Some(code),
                ..Default::default()
            })
            .map_err(ApiError::from);
        let _ = tx.send(last).await;
    }
}

/// The request checked, in the runtime's terms.
fn attached(start: &proto::ExecStart) -> Result<AttachedExec, ApiError> {
    if start.args.is_empty() || start.args[0].is_empty() {
        return Err(ApiError::invalid(
            "no command given: put it after --, as in `hivemind app exec --container-id ID -- sh`",
        ));
    }
    validate::env(&start.env)?;
    let given = |value: &str, check: fn(&str) -> Result<String, validate::InvalidInput>| {
        (!value.is_empty()).then(|| check(value)).transpose()
    };
    Ok(AttachedExec {
        args: start.args.clone(),
        tty: start.tty,
        stdin: start.stdin,
        size: start.size.map(size).filter(|s| s.width > 0 && s.height > 0),
        env: start.env.clone(),
        user: given(&start.user, validate::user)?,
        workdir: given(&start.workdir, validate::workdir)?,
    })
}

fn size(size: proto::TerminalSize) -> TerminalSize {
    TerminalSize {
        width: size.width,
        height: size.height,
    }
}

/// A caller's message as the runtime's inputs (a message is meant to carry one; any it
/// carries are taken in order).
fn inputs(message: proto::ExecInput) -> Vec<ExecInput> {
    let mut items = Vec::new();
    if !message.stdin.is_empty() {
        items.push(ExecInput::Stdin(message.stdin));
    }
    if let Some(resize) = message.resize {
        items.push(ExecInput::Resize(size(resize)));
    }
    if message.close_stdin {
        items.push(ExecInput::CloseStdin);
    }
    items
}
