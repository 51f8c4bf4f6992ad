//! Making, restarting and removing one container: the containerd objects, its network
//! namespace, its files, and its record, kept consistent. A create that fails part-way undoes
//! what it did.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, Health, now_ms},
    net::network::{NetworkError, NodeNetwork},
    runtime::{
        Runtime, RuntimeError,
        containers::{NewContainer, labels},
        image::ImageError,
        netns::{NetnsDir, NetnsError},
        spec::{self, BindMount, SpecInput},
    },
    state::State,
    store::StoreError,
    vault::Vault,
    volumes::VolumeDirs,
};

use super::secret_files;

/// Grace period for containers nobody wants any more.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container {id}: cannot write {path}")]
    Files {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image and the app's settings make no process (unknown user, no command, ...).
    #[error(transparent)]
    Process(#[from] super::process::ProcessError),
    #[error("container {id}: cannot open secret {secret}: {source}")]
    Secret {
        id: String,
        secret: String,
        #[source]
        source: Box<crate::vault::VaultError>,
    },
}

/// A create that failed: the container (whose record is marked failed) and why.
#[derive(Debug)]
pub struct FailedCreate {
    pub id: String,
    pub error: Box<LifecycleError>,
}

/// Owns the per-container directories under `<data dir>/containers/<id>`.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    runtime: Runtime,
    state: State,
    node: String,
    containers_dir: PathBuf,
    volumes: VolumeDirs,
    netns: NetnsDir,
    network: NodeNetwork,
    /// Opens the secrets mounted into containers.
    vault: Vault,
    /// Searched by containers' resolvers (`--dns-suffix`).
    dns_suffix: String,
}

impl Lifecycle {
    // Each argument is a separate owner this one drives; a struct of them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Runtime,
        state: State,
        node: String,
        containers_dir: PathBuf,
        volumes: VolumeDirs,
        netns: NetnsDir,
        network: NodeNetwork,
        vault: Vault,
    ) -> Self {
        Self {
            runtime,
            state,
            node,
            containers_dir,
            volumes,
            netns,
            network,
            vault,
            dns_suffix: crate::service::DEFAULT_SUFFIX.to_owned(),
        }
    }

    /// The DNS suffix written into containers' resolv.conf.
    #[must_use]
    pub fn with_dns_suffix(mut self, suffix: &str) -> Self {
        suffix.clone_into(&mut self.dns_suffix);
        self
    }

    pub fn network(&self) -> &NodeNetwork {
        &self.network
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("container.log")
    }

    /// Makes and starts a new container for `app`'s `slot`. The record is written first (so a
    /// crash leaves a record the reconciler cleans up, never an unknown container), and again
    /// with the container's address once it is on the network, before containerd has the
    /// container: whoever later finds the task running finds its address in the record too.
    /// On failure everything is undone and the record is marked failed with the reason.
    pub async fn create(&self, app: &AppSpec, slot: u32) -> Result<ContainerRecord, FailedCreate> {
        let id = format!("{}-{}", app.name, random_suffix());
        let mut record = ContainerRecord {
            id: id.clone(),
            app: app.name.clone(),
            slot,
            node: self.node.clone(),
            generation: app.generation,
            image: app.image.clone(),
            image_digest: String::new(),
            state: ContainerState::Creating,
            exit_code: None,
            restart_count: 0,
            pid: 0,
            ip: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            history: Vec::new(),
            health: app.health.as_ref().map(|_| Health::Starting),
            health_detail: String::new(),
            exposed_ports: Vec::new(),
            user: String::new(),
            stop_signal: None,
        };
        record.transition(
            ContainerState::Creating,
            None,
            format!("created for slot {slot}"),
        );
        let failed = |error: LifecycleError| FailedCreate {
            id: id.clone(),
            error: Box::new(error),
        };
        self.state
            .put_container(&record)
            .await
            .map_err(|err| failed(err.into()))?;
        crate::crashpoint::step("container recorded");
        match self.make(app, &mut record).await {
            Ok(()) => {
                record.transition(ContainerState::Running, None, "started");
                self.state
                    .put_container(&record)
                    .await
                    .map_err(|err| failed(err.into()))?;
                crate::crashpoint::step("container recorded running");
                Ok(record)
            }
            Err(err) => {
                self.undo(&id).await;
                record.transition(ContainerState::Failed, None, err.to_string());
                let _ = self.state.put_container(&record).await;
                Err(failed(err))
            }
        }
    }

    async fn make(
        &self,
        app: &AppSpec,
        record: &mut ContainerRecord,
    ) -> Result<(), LifecycleError> {
        let id = record.id.clone();
        let image = self.runtime.ensure_image(&app.image, false, None).await?;
        record.image_digest.clone_from(&image.digest);
        // Settled before anything is made: an image and settings that make no process fail
        // here, with nothing to undo.
        let accounts = self.runtime.image_accounts(&image.chain_id).await?;
        let process = super::process::process(app, &image.name, &image.config, &accounts, &id)?;
        record.exposed_ports.clone_from(&image.config.exposed_ports);
        record.user.clone_from(&process.user_display);
        record.stop_signal = Some(process.stop_signal.clone());
        let secrets = self.secret_values(app, &id).await?;
        let netns_path = self.netns.create(&id)?;
        crate::crashpoint::step("network namespace created");
        let attachment = self.network.attach(&id, &app.name, &netns_path).await?;
        crate::crashpoint::step("container attached");
        record.ip = Some(attachment.ip);
        self.state.put_container(record).await?;
        crate::crashpoint::step("container address recorded");
        let mut mounts = self.write_etc_files(&id, app, attachment.ip)?;
        for volume in &app.volumes {
            mounts.push(BindMount {
                source: self.volumes.data_path(&volume.volume),
                destination: volume.path.clone(),
                read_only: volume.read_only,
            });
        }
        let dir = self.dir(&id);
        mounts.extend(
            secret_files::materialise(&dir, &secrets, process.user.uid, process.user.gid).map_err(
                |source| LifecycleError::Files {
                    id: id.clone(),
                    path: dir.join("secrets"),
                    source,
                },
            )?,
        );
        let spec = spec::build(&SpecInput {
            id: id.clone(),
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            uid: process.user.uid,
            gid: process.user.gid,
            additional_gids: process.user.additional_gids,
            netns_path,
            mounts,
            memory_bytes: app.memory_bytes,
            cpu_millis: app.cpu_millis,
            cgroup_path: format!("{}/{id}", crate::paths::cgroup_parent(&self.node)),
        });
        let container_labels = HashMap::from([
            (labels::APP.to_owned(), app.name.clone()),
            (labels::SLOT.to_owned(), record.slot.to_string()),
            (labels::GENERATION.to_owned(), app.generation.to_string()),
            (labels::NODE.to_owned(), self.node.clone()),
        ]);
        self.runtime
            .create_container(&NewContainer {
                id: &id,
                image: &image.name,
                parent_snapshot: &image.chain_id,
                spec: &spec,
                labels: container_labels,
            })
            .await?;
        crate::crashpoint::step("containerd container created");
        record.pid = self.runtime.start_task(&id, &self.log_path(&id)).await?;
        crate::crashpoint::step("task started");
        Ok(())
    }

    /// Starts an exited container again (a new task in the same container).
    /// A running (unhealthy) one is stopped first, with the app's grace period.
    pub async fn restart(
        &self,
        record: &mut ContainerRecord,
        grace: Duration,
    ) -> Result<(), LifecycleError> {
        let reason = if record.state == ContainerState::Running {
            self.runtime
                .stop_task(&record.id, stop_signal(record), grace)
                .await?;
            format!("unhealthy: {}", record.health_detail)
        } else {
            format!(
                "exit code {}",
                record
                    .exit_code
                    .map_or_else(|| "?".to_owned(), |c| c.to_string())
            )
        };
        record.pid = self
            .runtime
            .start_task(&record.id, &self.log_path(&record.id))
            .await?;
        record.restart_count += 1;
        if record.health.is_some() {
            record.health = Some(Health::Starting);
            record.health_detail.clear();
        }
        let message = format!(
            "restarted after {reason} (restart #{})",
            record.restart_count
        );
        record.transition(ContainerState::Running, None, message);
        self.state.put_container(record).await?;
        Ok(())
    }

    /// Stops (SIGTERM, grace, SIGKILL) and removes the container, its namespace, its files and
    /// finally its record.
    pub async fn remove(
        &self,
        record: &mut ContainerRecord,
        grace: Duration,
        reason: &str,
    ) -> Result<(), LifecycleError> {
        if record.state != ContainerState::Stopping {
            record.transition(ContainerState::Stopping, record.exit_code, reason);
            self.state.put_container(record).await?;
            crate::crashpoint::step("container recorded stopping");
        }
        self.runtime
            .stop_task(&record.id, stop_signal(record), grace)
            .await?;
        crate::crashpoint::step("task stopped");
        self.runtime.delete_container(&record.id).await?;
        crate::crashpoint::step("containerd container deleted");
        self.network.detach(&record.id, record.ip).await?;
        crate::crashpoint::step("container detached");
        self.netns.remove(&record.id)?;
        self.remove_dir(&record.id);
        crate::crashpoint::step("network namespace removed");
        self.state.delete_container(&record.id).await?;
        crate::crashpoint::step("container record deleted");
        Ok(())
    }

    /// The address of a container found running with no address in its record (an adopted
    /// one, or a record from before addresses were recorded ahead of the task), re-derived
    /// from its address claim and its `eth0`; its endpoint is put back in place. `None` if it
    /// has no usable attachment.
    pub async fn recover_network(
        &self,
        id: &str,
        app: &str,
    ) -> Result<Option<std::net::Ipv4Addr>, LifecycleError> {
        Ok(self.network.recover(id, app, &self.netns.path(id)).await?)
    }

    /// Drops the record and local leftovers of a container containerd no longer has.
    pub async fn forget(&self, id: &str) -> Result<(), LifecycleError> {
        self.network.detach(id, None).await?;
        self.netns.remove(id)?;
        self.remove_dir(id);
        self.state.delete_container(id).await?;
        Ok(())
    }

    /// Removes a Hivemind container that has no record (left by a crash between creating it
    /// in containerd and recording it, or by a removed app).
    pub async fn remove_unrecorded(&self, id: &str) -> Result<(), LifecycleError> {
        self.runtime
            .stop_task(id, super::process::signal_number("SIGTERM"), ORPHAN_GRACE)
            .await?;
        self.runtime.delete_container(id).await?;
        self.network.detach(id, None).await?;
        self.netns.remove(id)?;
        self.remove_dir(id);
        Ok(())
    }

    /// Removes network namespaces and address claims that belong to no known container
    /// (what a crash mid-create or mid-remove can leave behind).
    pub async fn sweep_leftovers(&self, known: &[ContainerRecord]) {
        let is_known = |id: &str| known.iter().any(|r| r.id == id);
        for id in self.netns.list() {
            if !is_known(&id)
                && let Err(err) = self.netns.remove(&id)
            {
                tracing::warn!("{err}");
            }
        }
        if let Err(err) = self.network.sweep_addresses(is_known).await {
            tracing::warn!("releasing leftover addresses: {}", crate::error_chain(&err));
        }
    }

    /// Best-effort removal of whatever a failed create made.
    /// The values of the app's secrets, by file name: opened before anything is made, so a
    /// missing secret fails the create with nothing to undo.
    async fn secret_values(
        &self,
        app: &AppSpec,
        id: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, LifecycleError> {
        let mut values = Vec::with_capacity(app.secrets.len());
        for mount in &app.secrets {
            let value = self
                .vault
                .open_secret(&mount.secret)
                .await
                .map_err(|source| LifecycleError::Secret {
                    id: id.to_owned(),
                    secret: mount.secret.clone(),
                    source: Box::new(source),
                })?;
            values.push((mount.target.clone(), value));
        }
        Ok(values)
    }

    /// Removes the container's directory, its secrets' tmpfs first.
    fn remove_dir(&self, id: &str) {
        let dir = self.dir(id);
        secret_files::release(&dir);
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn undo(&self, id: &str) {
        if let Err(err) = self.runtime.delete_container(id).await {
            tracing::warn!(container = id, "cleanup after failed create: {err}");
        }
        if let Err(err) = self.network.detach(id, None).await {
            tracing::warn!(container = id, "cleanup after failed create: {err}");
        }
        if let Err(err) = self.netns.remove(id) {
            tracing::warn!(container = id, "cleanup after failed create: {err}");
        }
        self.remove_dir(id);
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` (the node's DNS server; a stack's
    /// apps also search their stack's zone) for the container.
    fn write_etc_files(
        &self,
        id: &str,
        app: &AppSpec,
        ip: std::net::Ipv4Addr,
    ) -> Result<Vec<BindMount>, LifecycleError> {
        let dir = self.dir(id);
        let write = |name: &str, contents: String| -> Result<BindMount, LifecycleError> {
            // The resolver is the node's, and the container may not repoint it.
            let read_only = name == "resolv.conf";
            let path = dir.join(name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, contents))
                .map_err(|source| LifecycleError::Files {
                    id: id.to_owned(),
                    path: path.clone(),
                    source,
                })?;
            Ok(BindMount {
                source: path,
                destination: format!("/etc/{name}"),
                read_only,
            })
        };
        Ok(vec![
            write(
                "hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{id}\n"
                ),
            )?,
            write("hostname", format!("{id}\n"))?,
            write(
                "resolv.conf",
                crate::service::dns::container_resolv_conf(
                    self.network.gateway(),
                    &self.dns_suffix,
                    crate::service::records::stack_of(app).map(|(stack, _)| stack),
                ),
            )?,
        ])
    }
}

/// The signal a stop of `record`'s container sends first.
fn stop_signal(record: &ContainerRecord) -> u32 {
    super::process::signal_number(record.stop_signal.as_deref().unwrap_or("SIGTERM"))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}
