//! The eBPF dataplane: loads the embedded object, pins its maps under
//! `/sys/fs/bpf/hivemind/<node>`, and owns every program and map handle.
//!
//! One task owns the loaded object; the rest of the agent talks to it through
//! [`DataplaneHandle`] with typed commands, so no map ever needs a lock.

mod bpffs;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader, programs::Program};
use hivemind_common::names;
use tokio::sync::{mpsc, oneshot};

use crate::proto;

/// The object built by `build.rs` from `hivemind-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hivemind"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot prepare the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the eBPF object")]
    LoadObject(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the kernel rejected program {name}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the dataplane task has stopped")]
    Stopped,
}

enum Command {
    Status(oneshot::Sender<proto::DataplaneStatus>),
}

/// The owner of the loaded object.
struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

/// Cheap to clone; every clone talks to the same owner.
#[derive(Clone, Debug)]
pub struct DataplaneHandle {
    commands: mpsc::Sender<Command>,
}

impl DataplaneHandle {
    pub async fn status(&self) -> Result<proto::DataplaneStatus, DataplaneError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| DataplaneError::Stopped)?;
        answer.await.map_err(|_| DataplaneError::Stopped)
    }
}

/// Loads every program (a verifier rejection fails here, at start, loudly) and spawns the
/// owning task.
pub fn start(pin_dir: &Path) -> Result<DataplaneHandle, DataplaneError> {
    let dataplane = Dataplane::load(pin_dir)?;
    let (commands, inbox) = mpsc::channel(64);
    tokio::spawn(dataplane.run(inbox));
    Ok(DataplaneHandle { commands })
}

impl Dataplane {
    fn load(pin_dir: &Path) -> Result<Self, DataplaneError> {
        bpffs::prepare(pin_dir).map_err(|source| DataplaneError::PinDir {
            path: pin_dir.to_owned(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(DataplaneError::LoadObject)?;
        for name in names::ALL_PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?;
            let loaded = match program {
                Program::SchedClassifier(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => Ok(()),
            };
            loaded.map_err(|source| DataplaneError::LoadProgram { name, source })?;
            tracing::debug!(program = name, "loaded");
        }
        tracing::info!(pin_dir = %pin_dir.display(), programs = names::ALL_PROGRAMS.len(), "eBPF dataplane loaded");
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    async fn run(self, mut inbox: mpsc::Receiver<Command>) {
        while let Some(command) = inbox.recv().await {
            match command {
                Command::Status(reply) => {
                    let _ = reply.send(self.status());
                }
            }
        }
    }

    fn status(&self) -> proto::DataplaneStatus {
        let programs = self
            .ebpf
            .programs()
            .map(|(name, program)| proto::ProgramStatus {
                name: name.to_owned(),
                kind: match program {
                    Program::SchedClassifier(_) => "tc",
                    Program::Xdp(_) => "xdp",
                    _ => "other",
                }
                .into(),
                id: program.info().map_or(0, |info| info.id()),
                attached: Vec::new(),
            })
            .collect();
        proto::DataplaneStatus {
            pin_path: self.pin_dir.display().to_string(),
            programs,
        }
    }
}
