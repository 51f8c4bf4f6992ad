//! An exec whose stdio is attached to a caller (`hivemind app exec`): through named pipes,
//! on a terminal when asked for one and resized as the caller's is, its exit status returned
//! once all of its output has been passed on.

use std::{path::Path, time::Duration};

use containerd_client::services::v1::{
    CloseIoRequest, ExecProcessRequest, ResizePtyRequest, WaitRequest, tasks_client::TasksClient,
};
use tokio::{io::AsyncWriteExt as _, net::unix::pipe, sync::mpsc};

use super::{
    Runtime, RuntimeError,
    exec::process_any,
    fifo::{self, Fifos},
    user::Accounts,
};

/// How long output may keep coming after the process exited (a child it left in the
/// background can hold the pipe open; its output past this is not waited for).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What to run, and how.
#[derive(Debug, Clone, Default)]
pub struct AttachedExec {
    pub args: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub size: Option<TerminalSize>,
    /// `KEY=VALUE`, added to or replacing the container's.
    pub env: Vec<String>,
    /// Instead of the container's user: `user[:group]`, names or ids.
    pub user: Option<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u32,
    pub height: u32,
}

/// From the caller, while the process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    Resize(TerminalSize),
    CloseStdin,
}

/// To the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Runtime {
    /// Runs `request` in running container `id` with the container's user, environment,
    /// working directory and capabilities unless the request says otherwise. `input` feeds
    /// it; its output goes to `output`. Returns its exit status (128 + N for signal N). A
    /// caller that stops listening (`output` closed) kills it.
    pub async fn exec_attached(
        &self,
        id: &str,
        exec_id: &str,
        fifo_dir: &Path,
        request: &AttachedExec,
        mut input: mpsc::Receiver<ExecInput>,
        output: mpsc::Sender<ExecOutput>,
    ) -> Result<u32, RuntimeError> {
        let refused = |message: String| RuntimeError::ExecRefused {
            id: id.to_owned(),
            message,
        };
        let task = self
            .task(id)
            .await?
            .filter(|task| task.running)
            .ok_or_else(|| refused("the container is not running".into()))?;
        let mut process = self.container_process(id).await?;
        let accounts = || read_accounts(task.pid);
        shape_process(&mut process, request, accounts).map_err(refused)?;

        let io_error = |what: &'static str| {
            move |source| RuntimeError::ExecIo {
                id: id.to_owned(),
                what,
                source,
            }
        };
        let fifos = Fifos::create(fifo_dir, request.stdin, request.tty)
            .map_err(io_error("create its pipes"))?;
        let stdin = fifos.open_stdin().map_err(io_error("open its stdin"))?;
        let mut readers = vec![fifo::forward(
            fifos.stdout.clone(),
            output.clone(),
            ExecOutput::Stdout,
        )];
        if let Some(path) = &fifos.stderr {
            readers.push(fifo::forward(
                path.clone(),
                output.clone(),
                ExecOutput::Stderr,
            ));
        }

        let status = match self
            .start_attached(id, exec_id, &fifos, request, &process)
            .await
        {
            Ok(()) => self.attend(id, exec_id, stdin, &mut input, &output).await,
            Err(err) => Err(err),
        };
        // Everything the process wrote reaches the caller before its exit status does.
        let drained = tokio::time::timeout(
            OUTPUT_GRACE,
            futures_util::future::join_all(readers.iter_mut()),
        )
        .await;
        if drained.is_err() {
            fifos.release_readers();
            readers.iter().for_each(tokio::task::JoinHandle::abort);
        }
        self.forget_exec(id, exec_id).await;
        status
    }

    async fn start_attached(
        &self,
        id: &str,
        exec_id: &str,
        fifos: &Fifos,
        request: &AttachedExec,
        process: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        let uri = |path: Option<&Path>| path.map(|p| p.display().to_string()).unwrap_or_default();
        let mut tasks = TasksClient::new(self.channel.clone());
        let started = async {
            tasks
                .exec(self.request(ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stdin: uri(fifos.stdin.as_deref()),
                    stdout: uri(Some(&fifos.stdout)),
                    stderr: uri(fifos.stderr.as_deref()),
                    terminal: request.tty,
                    spec: Some(process_any(process)),
                }))
                .await
                .map_err(|status| self.call_error("exec in", id, &status))?;
            self.start_exec(id, exec_id).await
        }
        .await;
        if started.is_err() {
            // The shim never opens the pipes of a process that did not start.
            fifos.release_readers();
        }
        started
    }

    /// Feeds the running process its input until it exits.
    async fn attend(
        &self,
        id: &str,
        exec_id: &str,
        mut stdin: Option<pipe::Sender>,
        input: &mut mpsc::Receiver<ExecInput>,
        output: &mpsc::Sender<ExecOutput>,
    ) -> Result<u32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let mut waiter = tasks.clone();
        let wait = waiter.wait(self.request(WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        }));
        tokio::pin!(wait);
        let exited = |reply: Result<tonic::Response<_>, tonic::Status>| {
            reply
                .map(
                    |reply: tonic::Response<containerd_client::services::v1::WaitResponse>| {
                        reply.into_inner().exit_status
                    },
                )
                .map_err(|status| self.call_error("wait for an exec in", id, &status))
        };
        let mut listening = true;
        let mut caller_gone = false;
        loop {
            tokio::select! {
                reply = &mut wait => return exited(reply),
                () = output.closed(), if !caller_gone => {
                    caller_gone = true;
                    listening = false;
                    stdin = None;
                    self.kill_exec(id, exec_id).await;
                }
                message = input.recv(), if listening => match message {
                    Some(ExecInput::Stdin(bytes)) => {
                        if let Some(pipe) = stdin.as_mut() {
                            // A process that does not read its stdin must not keep its exit
                            // from being seen.
                            tokio::select! {
                                written = pipe.write_all(&bytes) => {
                                    if written.is_err() {
                                        stdin = None;
                                    }
                                }
                                reply = &mut wait => return exited(reply),
                            }
                        }
                    }
                    Some(ExecInput::Resize(size)) => {
                        let _ = tasks
                            .resize_pty(self.request(ResizePtyRequest {
                                container_id: id.into(),
                                exec_id: exec_id.into(),
                                width: size.width,
                                height: size.height,
                            }))
                            .await;
                    }
                    Some(ExecInput::CloseStdin) => self.close_stdin(id, exec_id, &mut stdin).await,
                    None => {
                        // The caller sends nothing more: the process reads end of file.
                        listening = false;
                        self.close_stdin(id, exec_id, &mut stdin).await;
                    }
                },
            }
        }
    }
}

impl Runtime {
    /// Ends the process's stdin once what was written to the pipe has been read. Closing our
    /// end is not enough: the shim holds a writing end of its own until told to close it.
    async fn close_stdin(&self, id: &str, exec_id: &str, stdin: &mut Option<pipe::Sender>) {
        if stdin.take().is_none() {
            return;
        }
        let _ = TasksClient::new(self.channel.clone())
            .close_io(self.request(CloseIoRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                stdin: true,
            }))
            .await;
    }
}

/// The container's `/etc/passwd` and `/etc/group`, read through its running process's root.
fn read_accounts(pid: u32) -> Accounts {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/root/etc/{file}")).unwrap_or_default()
    };
    Accounts::parse(&read("passwd"), &read("group"))
}

/// The container's process made into the exec's: its command, terminal, environment, user
/// and working directory.
fn shape_process(
    process: &mut serde_json::Value,
    request: &AttachedExec,
    accounts: impl FnOnce() -> Accounts,
) -> Result<(), String> {
    if request.args.is_empty() {
        return Err("no command given".into());
    }
    process["args"] = serde_json::json!(request.args);
    process["terminal"] = serde_json::json!(request.tty);
    match (request.tty, request.size) {
        (true, Some(size)) => {
            process["consoleSize"] = serde_json::json!({
                "height": size.height,
                "width": size.width,
            });
        }
        _ => {
            if let Some(object) = process.as_object_mut() {
                object.remove("consoleSize");
            }
        }
    }
    let mut env: Vec<String> = process["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(user) = &request.user {
        let user = accounts().resolve(user).map_err(|err| err.to_string())?;
        process["user"] = serde_json::json!({
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        });
        set_var(&mut env, &format!("HOME={}", user.home));
    }
    if request.tty && !env.iter().any(|var| var.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    for var in &request.env {
        set_var(&mut env, var);
    }
    process["env"] = serde_json::json!(env);
    if let Some(dir) = &request.workdir {
        process["cwd"] = serde_json::json!(dir);
    }
    Ok(())
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier value of `KEY`.
fn set_var(env: &mut Vec<String>, var: &str) {
    let key = |var: &str| var.split_once('=').map_or(var, |(key, _)| key).to_owned();
    let wanted = key(var);
    env.retain(|existing| key(existing) != wanted);
    env.push(var.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "args": ["httpd", "-f"],
            "env": ["PATH=/bin", "HOME=/root", "MODE=prod"],
            "cwd": "/www",
            "user": { "uid": 1000, "gid": 1000 },
        })
    }

    fn accounts() -> Accounts {
        Accounts::parse(
            "root:x:0:0::/root:/bin/sh\n",
            "root:x:0:\nwheel:x:10:root\n",
        )
    }

    #[test]
    fn the_container_process_is_kept_but_for_the_command() {
        let mut process = base();
        let request = AttachedExec {
            args: vec!["id".into()],
            ..AttachedExec::default()
        };
        shape_process(&mut process, &request, accounts).expect("shaped");
        assert_eq!(process["args"], serde_json::json!(["id"]));
        assert_eq!(process["terminal"], false);
        assert_eq!(process["cwd"], "/www");
        assert_eq!(process["user"]["uid"], 1000);
        assert_eq!(
            process["env"],
            serde_json::json!(["PATH=/bin", "HOME=/root", "MODE=prod"])
        );
    }

    #[test]
    fn a_terminal_user_env_and_workdir_override() {
        let mut process = base();
        let request = AttachedExec {
            args: vec!["sh".into()],
            tty: true,
            size: Some(TerminalSize {
                width: 120,
                height: 40,
            }),
            env: vec!["MODE=debug".into()],
            user: Some("root".into()),
            workdir: Some("/tmp".into()),
            ..AttachedExec::default()
        };
        shape_process(&mut process, &request, accounts).expect("shaped");
        assert_eq!(process["terminal"], true);
        assert_eq!(
            process["consoleSize"],
            serde_json::json!({ "height": 40, "width": 120 })
        );
        assert_eq!(
            process["user"],
            serde_json::json!({ "uid": 0, "gid": 0, "additionalGids": [10] })
        );
        assert_eq!(process["cwd"], "/tmp");
        assert_eq!(
            process["env"],
            serde_json::json!(["PATH=/bin", "HOME=/root", "TERM=xterm", "MODE=debug"])
        );
    }

    #[test]
    fn an_unknown_user_and_no_command_are_refused() {
        let mut process = base();
        let request = AttachedExec {
            args: vec!["id".into()],
            user: Some("nobody".into()),
            ..AttachedExec::default()
        };
        let err = shape_process(&mut process, &request, accounts).expect_err("refused");
        assert!(err.contains("nobody"), "{err}");
        let err =
            shape_process(&mut base(), &AttachedExec::default(), accounts).expect_err("refused");
        assert_eq!(err, "no command given");
    }
}
