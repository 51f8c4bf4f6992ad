//! `hivemind join --host X`: the joiner's side ([`Cluster::join`]) and the side of the node
//! it joins through ([`Cluster::admit`], [`Cluster::abort`]).
//!
//! 1. The joiner checks itself: not in a cluster, no apps, volumes, policies, secrets or
//!    registry logins, an underlay address. It connects to X's cluster port, trusting only
//!    the CA whose hash is in the token, and sends the token's secret with its name,
//!    address, CIDR, VXLAN port and public key (`ClusterPeer.Admit`).
//! 2. X checks the secret, the name (not in use), the address, the CIDR and VXLAN port (equal
//!    to the cluster's); reserves the name (a `joining` node record, create-if-absent), claims
//!    the joiner's /24, signs its certificate and, while the cluster has fewer than three
//!    members, adds its etcd member as a learner (retrying while etcd refuses a second
//!    learner or is electing). The reply carries the cluster's sealing key.
//! 3. The joiner writes its certificates, starts its member with `--initial-cluster-state
//!    existing`, promotes it to a voter through the voting members (retrying while it catches
//!    up), and waits until it serves reads. Then it writes the sealing key and `cluster.json`
//!    (the commit point), keeps `state.redb` as a backup, answers the CLI and re-executes
//!    itself: the new agent adopts the running member and keeps its state in etcd.
//!
//! Any failure before the commit point undoes both sides: the joiner stops its member and
//! removes its files, and asks X to `Abort` (remove the member, the subnet claim and the
//! record).

use std::{net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;

use super::{
    CaRecord, Cluster, ClusterConfig, ClusterRecord, Mode, NodeTls, TokenRecord,
    bootstrap::{self, BootError},
    client::{self, PinnedError},
    etcd::{self, EtcdMember, InitialState, MemberConfig},
    keys,
    nodes::{self, NodeRecord, NodeState},
    pki, save_tls,
};
use crate::{
    config::is_dns_label,
    model::now_ms,
    net::ipam,
    proto::{self, cluster_peer_client::ClusterPeerClient},
    sealed::SealKey,
    state::State,
    store::{Member, Store, StoreError},
};

/// How long the node joined through may take to admit (it may wait for another joiner's
/// learner to be promoted: etcd 3.4 allows one learner at a time).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(150);
/// How long adding a learner is retried.
const ADD_MEMBER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long promoting the new member is retried while it catches up.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Members (voters and learners about to become voters) a cluster grows to; later nodes run
/// no member and use the voters.
const MAX_MEMBERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this node is already in cluster {cluster} (as {node})")]
    AlreadyClustered { cluster: String, node: String },
    #[error(
        "this agent keeps its state in an external etcd (--etcd-endpoints): agents started with the same endpoints already share it; `hivemind join` joins clusters made with --cluster-init"
    )]
    ExternalEtcd,
    #[error(
        "this node has {what}; joining would replace its state with the cluster's, so remove them first ({how}) or join from a fresh node"
    )]
    NotEmpty { what: String, how: String },
    #[error(
        "this node's underlay address is unknown: restart the agent with --node-ip or --underlay-iface"
    )]
    NoNodeIp,
    #[error("a join is already under way on this node")]
    Busy,
    #[error(transparent)]
    Token(pki::PkiError),
    #[error(transparent)]
    Connect(#[from] PinnedError),
    #[error("{address} refused the join: {message}")]
    Refused { address: String, message: String },
    #[error("{address} did not answer the join: {message}")]
    NoAnswer { address: String, message: String },
    #[error("{step} failed, so the join was undone on both sides: {reason}")]
    Failed { step: &'static str, reason: String },
    #[error("checking this node's state: {0}")]
    Store(#[from] StoreError),
}

/// Why a node refuses to admit a joiner; the joiner prints the message.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("this node is not in a Hivemind cluster")]
    NotClustered,
    #[error(
        "the join token's secret is not this cluster's (get the current token with `hivemind cluster token` on a cluster node)"
    )]
    WrongSecret,
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error(
        "a node named {name} is already in the cluster; start the joining agent with another --node-name"
    )]
    NameInUse { name: String },
    #[error("address {ip} already belongs to node {node}")]
    AddressInUse { ip: Ipv4Addr, node: String },
    #[error(
        "the joining node's cluster CIDR {theirs} differs from the cluster's {ours}; restart its agent with --cluster-cidr {ours}"
    )]
    CidrMismatch { theirs: String, ours: Ipv4Net },
    #[error(
        "the joining node's VXLAN port {theirs} differs from the cluster's {ours}; restart its agent with --vxlan-port {ours}"
    )]
    VxlanMismatch { theirs: u32, ours: u16 },
    #[error("node {name} is a member of the cluster, not a node being joined; nothing to abort")]
    NotJoining { name: String },
    #[error("the cluster's {what} is missing from the store")]
    Missing { what: &'static str },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("claiming a subnet: {0}")]
    Ipam(#[from] ipam::IpamError),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("adding the etcd member: {0}")]
    AddMember(StoreError),
    #[error("the cluster's sealing key: {0}")]
    Seal(String),
}

impl AdmitError {
    /// The gRPC code a joiner sees.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::WrongSecret => tonic::Code::Unauthenticated,
            Self::Invalid { .. } => tonic::Code::InvalidArgument,
            Self::NameInUse { .. } | Self::AddressInUse { .. } => tonic::Code::AlreadyExists,
            Self::NotClustered
            | Self::CidrMismatch { .. }
            | Self::VxlanMismatch { .. }
            | Self::NotJoining { .. } => tonic::Code::FailedPrecondition,
            Self::Missing { .. }
            | Self::Store(_)
            | Self::Ipam(_)
            | Self::Pki(_)
            | Self::AddMember(_)
            | Self::Seal(_) => tonic::Code::Internal,
        }
    }
}

impl From<AdmitError> for tonic::Status {
    fn from(err: AdmitError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

/// The error and its sources on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let next = err.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = err.source();
    }
    // One line for the CLI, whatever the sources say.
    text.replace('\n', " ")
}

impl Cluster {
    // ---------------------------------------------------------------------------------------
    // The node joined through.

    async fn check_secret(&self, secret: &str) -> Result<(), AdmitError> {
        let record = self
            .inner
            .store
            .get_json::<TokenRecord>(keys::JOIN_TOKEN)
            .await?
            .ok_or(AdmitError::Missing { what: "join token" })?;
        let token = pki::JoinToken::parse(&record.value.token)?;
        if token.secret_matches(secret) {
            Ok(())
        } else {
            Err(AdmitError::WrongSecret)
        }
    }

    /// Admits a joiner (`ClusterPeer.Admit`). Changes nothing unless it succeeds.
    pub async fn admit(
        &self,
        request: proto::AdmitRequest,
    ) -> Result<proto::AdmitReply, AdmitError> {
        let Mode::Cluster(me) = &self.inner.mode else {
            return Err(AdmitError::NotClustered);
        };
        let _one_at_a_time = self.inner.admit_lock.lock().await;
        let store = &self.inner.store;
        self.check_secret(&request.secret).await?;
        let cluster = store
            .get_json::<ClusterRecord>(keys::CLUSTER)
            .await?
            .ok_or(AdmitError::Missing {
                what: "cluster record",
            })?
            .value;

        let Joiner {
            name,
            ip,
            cluster_port,
            public_key,
        } = check_joiner(&request, &cluster)?;
        let (revision, members) = self.check_name_and_address(&name, ip).await?;
        let peer_url = etcd::peer_url(ip);
        let etcd_member = members.len() < MAX_MEMBERS;

        let mut record = NodeRecord {
            name: name.clone(),
            underlay_ip: Some(ip),
            subnet: None,
            cluster_address: format!("{ip}:{cluster_port}"),
            version: request.version.clone(),
            joined_at_ms: 0,
            state: NodeState::Joining,
        };
        if !nodes::create_node(store, &record, revision).await? {
            return Err(AdmitError::NameInUse { name });
        }
        let admitted = async {
            let subnet = ipam::claim_subnet(store, cluster.cluster_cidr, &name).await?;
            record.subnet = Some(subnet);
            nodes::put_node(store, &record).await?;
            let ca = store
                .get_json::<CaRecord>(keys::CA)
                .await?
                .ok_or(AdmitError::Missing { what: "CA" })?
                .value;
            let ca = pki::Ca::load(&cluster.cluster_id, &ca.cert_pem, &ca.key_pem)?;
            // The daemon made it at start; this reads it.
            let seal_key = SealKey::load_or_create(&self.inner.data_dir.seal_key())
                .map_err(|err| AdmitError::Seal(err.to_string()))?;
            let cert_pem = ca.issue_node(&name, &[ip.into()], &public_key)?;
            let member_id = if etcd_member {
                add_learner(store, &peer_url).await?.id
            } else {
                0
            };
            let endpoints = members
                .iter()
                .filter(|m| !m.is_learner)
                .flat_map(|m| m.client_urls.iter().cloned())
                .collect();
            Ok::<_, AdmitError>(proto::AdmitReply {
                cluster_id: cluster.cluster_id.clone(),
                ca_pem: ca.cert_pem().to_owned(),
                cert_pem,
                subnet: subnet.to_string(),
                etcd_member,
                member_id,
                etcd_endpoints: endpoints,
                admitted_by: me.node_name.clone(),
                cluster_cidr: cluster.cluster_cidr.to_string(),
                vxlan_port: u32::from(cluster.vxlan_port),
                seal_key: seal_key.bytes().to_vec(),
            })
        }
        .await;
        match admitted {
            Ok(reply) => {
                tracing::info!(node = %name, %ip, subnet = %reply.subnet, etcd_member, "admitted a node");
                Ok(reply)
            }
            Err(err) => {
                tracing::warn!(node = %name, "admitting failed, undoing it: {err}");
                self.forget_joiner(&name, 0).await;
                Err(err)
            }
        }
    }

    /// The name and address must be free; an earlier, unfinished attempt of the same node
    /// (same name and address, still joining, not live) is replaced: its record's revision is
    /// returned (0: no record) and its etcd member removed. Also returns the other members.
    async fn check_name_and_address(
        &self,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<(u64, Vec<Member>), AdmitError> {
        let store = &self.inner.store;
        let all = nodes::nodes(store).await?;
        if let Some(other) = all
            .values()
            .find(|n| n.name != name && n.underlay_ip == Some(ip))
        {
            return Err(AdmitError::AddressInUse {
                ip,
                node: other.name.clone(),
            });
        }
        let revision = match nodes::node_with_revision(store, name).await? {
            None => 0,
            Some((record, revision))
                if record.state == NodeState::Joining
                    && record.underlay_ip == Some(ip)
                    && !nodes::is_ready(store, name).await? =>
            {
                tracing::info!(node = %name, "replacing an unfinished join of the same node");
                revision
            }
            Some(_) => return Err(AdmitError::NameInUse { name: name.into() }),
        };
        let peer_url = etcd::peer_url(ip);
        let members = store.members().await?;
        if members
            .iter()
            .any(|m| m.name == name && !m.peer_urls.contains(&peer_url))
        {
            return Err(AdmitError::NameInUse { name: name.into() });
        }
        for stale in members.iter().filter(|m| m.peer_urls.contains(&peer_url)) {
            tracing::info!(node = %name, member = format!("{:x}", stale.id), "removing the etcd member of an unfinished join");
            store
                .remove_member(stale.id)
                .await
                .map_err(AdmitError::AddMember)?;
        }
        let members = store
            .members()
            .await?
            .into_iter()
            .filter(|m| !m.peer_urls.contains(&peer_url))
            .collect();
        Ok((revision, members))
    }

    /// Undoes an admission (`ClusterPeer.Abort`): only of a node that is still joining.
    pub async fn abort(&self, request: proto::AbortRequest) -> Result<(), AdmitError> {
        if !matches!(self.inner.mode, Mode::Cluster(_)) {
            return Err(AdmitError::NotClustered);
        }
        self.check_secret(&request.secret).await?;
        let _one_at_a_time = self.inner.admit_lock.lock().await;
        match nodes::node(&self.inner.store, &request.node_name).await? {
            None => Ok(()),
            Some(record) if record.state != NodeState::Joining => Err(AdmitError::NotJoining {
                name: request.node_name,
            }),
            Some(_) => {
                tracing::info!(node = %request.node_name, "the joiner gave up; undoing its admission");
                self.forget_joiner(&request.node_name, request.member_id)
                    .await;
                Ok(())
            }
        }
    }

    /// Removes a joining node's member (if `member_id` is its), subnet claim and record.
    async fn forget_joiner(&self, name: &str, member_id: u64) {
        let store = &self.inner.store;
        let record = nodes::node(store, name).await.ok().flatten();
        if member_id != 0
            && let Some(ip) = record.as_ref().and_then(|r| r.underlay_ip)
        {
            let peer_url = etcd::peer_url(ip);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let result = match store.members().await {
                    Ok(members) => match members
                        .iter()
                        .find(|m| m.id == member_id && m.peer_urls.contains(&peer_url))
                    {
                        Some(member) => store.remove_member(member.id).await,
                        None => Ok(()),
                    },
                    Err(err) => Err(err),
                };
                match result {
                    Ok(()) => break,
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!("removing member {member_id:x}: {err}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(err) => {
                        tracing::error!("removing member {member_id:x} of {name}: {err}");
                        break;
                    }
                }
            }
        }
        if let Some(subnet) = record.as_ref().and_then(|r| r.subnet)
            && let Err(err) = ipam::release_subnet(store, subnet, name).await
        {
            tracing::error!("releasing {subnet} of {name}: {err}");
        }
        if let Err(err) = nodes::delete_node_in_state(store, name, NodeState::Joining).await {
            tracing::error!("removing the record of {name}: {err}");
        }
    }

    // ---------------------------------------------------------------------------------------
    // The joiner.

    /// Joins the cluster `host` belongs to. On success the node is committed to the cluster
    /// and [`Cluster::restart_requested`] fires: the daemon re-executes itself into it.
    pub async fn join(&self, host: &str, token: &str) -> Result<proto::JoinReply, JoinError> {
        let inner = &self.inner;
        let _one = inner.join_lock.try_lock().map_err(|_| JoinError::Busy)?;
        match &inner.mode {
            Mode::Cluster(config) => {
                return Err(JoinError::AlreadyClustered {
                    cluster: config.cluster_id.clone(),
                    node: config.node_name.clone(),
                });
            }
            Mode::ExternalEtcd => return Err(JoinError::ExternalEtcd),
            Mode::Single => {}
        }
        let node_ip = inner.node_ip.ok_or(JoinError::NoNodeIp)?;
        check_empty(&State::new(inner.store.clone())).await?;
        let token = pki::JoinToken::parse(token).map_err(JoinError::Token)?;
        let address = client::with_port(host, super::DEFAULT_CLUSTER_PORT);
        let channel = client::connect_pinned(&address, &token.ca_hash).await?;
        let mut peer = ClusterPeerClient::new(channel);
        let key = pki::NodeKey::generate().map_err(JoinError::Token)?;
        let request = proto::AdmitRequest {
            secret: token.secret.clone(),
            node_name: inner.node_name.clone(),
            node_ip: node_ip.to_string(),
            cluster_cidr: inner.cluster_cidr.to_string(),
            vxlan_port: u32::from(inner.vxlan_port),
            cluster_port: u32::from(inner.cluster_port),
            version: crate::VERSION.to_owned(),
            public_key: key.public_key().raw().to_vec(),
        };
        tracing::info!(%address, "asking to join");
        let reply = match tokio::time::timeout(ADMIT_TIMEOUT, peer.admit(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(refused(&address, &status)),
            Err(_) => {
                return Err(JoinError::NoAnswer {
                    address,
                    message: format!("no answer within {ADMIT_TIMEOUT:?}"),
                });
            }
        };
        tracing::info!(through = %reply.admitted_by, subnet = %reply.subnet, etcd_member = reply.etcd_member, "admitted; setting up");

        let mut undo = Undo::default();
        match self.settle(&reply, &token, &key, node_ip, &mut undo).await {
            Ok(()) => {
                if let Some(member) = undo.member.take()
                    && let Ok(mut slot) = inner.etcd.lock()
                {
                    *slot = Some(member);
                }
                let _ = inner.restart.send(true);
                let role = if reply.etcd_member { "voter" } else { "" };
                Ok(proto::JoinReply {
                    cluster_id: reply.cluster_id.clone(),
                    node_name: inner.node_name.clone(),
                    joined_through: reply.admitted_by.clone(),
                    subnet: reply.subnet.clone(),
                    etcd_role: role.into(),
                    message: format!(
                        "node {} joined cluster {} through {} with subnet {}; the agent restarts into the cluster",
                        inner.node_name, reply.cluster_id, reply.admitted_by, reply.subnet
                    ),
                })
            }
            Err((step, reason)) => {
                tracing::warn!(step, "joining failed, undoing it: {reason}");
                undo.run(&inner.data_dir);
                let abort = proto::AbortRequest {
                    secret: token.secret.clone(),
                    node_name: inner.node_name.clone(),
                    member_id: reply.member_id,
                };
                if let Err(status) = peer.abort(abort).await {
                    tracing::error!(%address, "asking to undo the admission: {}", status.message());
                }
                Err(JoinError::Failed { step, reason })
            }
        }
    }

    /// The joiner's setup after admission, up to the commit point. Errors name the step.
    async fn settle(
        &self,
        reply: &proto::AdmitReply,
        token: &pki::JoinToken,
        key: &pki::NodeKey,
        node_ip: Ipv4Addr,
        undo: &mut Undo,
    ) -> Result<(), (&'static str, String)> {
        let inner = &self.inner;
        let data_dir = &inner.data_dir;
        let fail = |step: &'static str| move |err: &dyn std::error::Error| (step, chain(err));
        let ca_der = pki::first_cert_der(&reply.ca_pem, "the CA certificate")
            .map_err(|e| fail("checking the CA")(&e))?;
        if pki::cert_hash(&ca_der) != token.ca_hash {
            return Err((
                "checking the CA",
                "the node sent a CA other than the one it presented".into(),
            ));
        }
        let tls = NodeTls {
            ca_pem: reply.ca_pem.clone(),
            cert_pem: reply.cert_pem.clone(),
            key_pem: key.pem(),
        };
        undo.files = true;
        save_tls(data_dir, &tls).map_err(|e| fail("writing the certificates")(&e))?;
        let voters = Store::connect_etcd_tls(&reply.etcd_endpoints, &bootstrap::etcd_tls(&tls))
            .await
            .map_err(|e| fail("reaching the cluster's etcd")(&e))?;

        let mut config = ClusterConfig {
            cluster_id: reply.cluster_id.clone(),
            node_name: inner.node_name.clone(),
            node_ip,
            cluster_cidr: reply.cluster_cidr.parse().unwrap_or(inner.cluster_cidr),
            vxlan_port: u16::try_from(reply.vxlan_port).unwrap_or(inner.vxlan_port),
            cluster_port: inner.cluster_port,
            etcd_member: reply.etcd_member,
            initial_cluster: String::new(),
            initial_state: InitialState::Existing,
            etcd_endpoints: reply.etcd_endpoints.clone(),
            joined_at_ms: now_ms(),
        };
        if reply.etcd_member {
            let local = self
                .start_member(&voters, reply, &tls, node_ip, &mut config, undo)
                .await?;
            promote(&voters, reply.member_id)
                .await
                .map_err(|e| fail("promoting the etcd member to a voter")(&e))?;
            wait_readable(&local)
                .await
                .map_err(|e| fail("waiting for the etcd member to catch up")(&e))?;
            config.etcd_endpoints = vec![etcd::client_url(node_ip)];
        }
        // The cluster's secrets open with the cluster's key. The node is empty (see
        // `check_empty`), so nothing sealed with its own key is lost.
        SealKey::from_bytes(&reply.seal_key)
            .ok_or_else(|| {
                (
                    "taking the cluster's sealing key",
                    "the node sent no valid key".to_owned(),
                )
            })?
            .save(&data_dir.seal_key())
            .map_err(|e| fail("taking the cluster's sealing key")(&e))?;
        config
            .save(data_dir)
            .map_err(|e| fail("writing cluster.json")(&e))?;
        // Committed. The redb file is not the store any more.
        undo.files = false;
        if let Err(err) = bootstrap::finish_commit(data_dir) {
            tracing::warn!("{err}");
        }
        tracing::info!(cluster = %config.cluster_id, "joined");
        Ok(())
    }

    /// Starts the joiner's member with the current membership as its initial cluster; retries
    /// when another join changed the membership in between ("member count is unequal").
    async fn start_member(
        &self,
        voters: &Store,
        reply: &proto::AdmitReply,
        tls: &NodeTls,
        node_ip: Ipv4Addr,
        config: &mut ClusterConfig,
        undo: &mut Undo,
    ) -> Result<Store, (&'static str, String)> {
        let inner = &self.inner;
        let step = "starting the etcd member";
        for attempt in 1..=3 {
            let members = voters
                .members()
                .await
                .map_err(|e| ("listing the etcd members", chain(&e)))?;
            let names = nodes::nodes(voters).await.unwrap_or_default();
            config.initial_cluster =
                initial_cluster(&members, reply.member_id, &inner.node_name, &names);
            let member = EtcdMember::start(MemberConfig {
                name: inner.node_name.clone(),
                node_ip,
                initial_cluster: config.initial_cluster.clone(),
                initial_state: InitialState::Existing,
                cluster_token: reply.cluster_id.clone(),
                data_dir: inner.data_dir.clone(),
            })
            .map_err(|e| (step, chain(&e)))?;
            match bootstrap::wait_for_member(&member, tls).await {
                Ok(local) => {
                    undo.member = Some(member);
                    return Ok(local);
                }
                Err(err) => {
                    member.kill();
                    let unequal = matches!(&err, BootError::Etcd(etcd::EtcdError::Exited { tail, .. }) if tail.contains("member count is unequal"));
                    if unequal && attempt < 3 {
                        tracing::info!("the membership changed while starting; trying again");
                        let _ = std::fs::remove_dir_all(inner.data_dir.etcd());
                        continue;
                    }
                    return Err((step, chain(&err)));
                }
            }
        }
        Err((step, "the membership kept changing".into()))
    }
}

/// What a failed join must remove on the joiner.
#[derive(Debug, Default)]
struct Undo {
    member: Option<EtcdMember>,
    files: bool,
}

impl Undo {
    fn run(&mut self, data_dir: &crate::paths::DataDir) {
        if let Some(member) = self.member.take() {
            member.kill();
        }
        if self.files {
            bootstrap::clean_leftovers(data_dir);
            let _ = std::fs::remove_file(data_dir.cluster_config());
        }
    }
}

/// A joiner's settings, checked against the cluster's.
struct Joiner {
    name: String,
    ip: Ipv4Addr,
    cluster_port: u16,
    public_key: pki::NodePublicKey,
}

fn check_joiner(
    request: &proto::AdmitRequest,
    cluster: &ClusterRecord,
) -> Result<Joiner, AdmitError> {
    let name = request.node_name.clone();
    if !is_dns_label(&name) {
        return Err(AdmitError::Invalid {
            what: "node name",
            value: name,
        });
    }
    let ip: Ipv4Addr = request.node_ip.parse().map_err(|_| AdmitError::Invalid {
        what: "node address",
        value: request.node_ip.clone(),
    })?;
    if request.cluster_cidr.parse::<Ipv4Net>().ok() != Some(cluster.cluster_cidr) {
        return Err(AdmitError::CidrMismatch {
            theirs: request.cluster_cidr.clone(),
            ours: cluster.cluster_cidr,
        });
    }
    if request.vxlan_port != u32::from(cluster.vxlan_port) {
        return Err(AdmitError::VxlanMismatch {
            theirs: request.vxlan_port,
            ours: cluster.vxlan_port,
        });
    }
    let cluster_port = u16::try_from(request.cluster_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AdmitError::Invalid {
            what: "cluster port",
            value: request.cluster_port.to_string(),
        })?;
    let public_key = pki::NodePublicKey::from_raw(request.public_key.clone())?;
    Ok(Joiner {
        name,
        ip,
        cluster_port,
        public_key,
    })
}

/// Apps, volumes, policies, secrets and registry logins on a node that wants to join: refused,
/// with what to do (its secrets would not open with the cluster's key).
async fn check_empty(state: &State) -> Result<(), JoinError> {
    // (how many, one, several, the command that removes them)
    let held = [
        (state.apps().await?.len(), "app", "apps", "hivemind app rm"),
        (
            state.volumes().await?.len(),
            "volume",
            "volumes",
            "hivemind volume rm",
        ),
        (
            state.policies().await?.len(),
            "policy",
            "policies",
            "hivemind policy rm",
        ),
        (
            state.secrets().await?.len(),
            "secret",
            "secrets",
            "hivemind secret rm",
        ),
        (
            state.registry_logins().await?.len(),
            "registry login",
            "registry logins",
            "hivemind registry logout",
        ),
    ];
    let held: Vec<_> = held.into_iter().filter(|(n, ..)| *n > 0).collect();
    if held.is_empty() {
        return Ok(());
    }
    let what = held
        .iter()
        .map(|(n, one, several, _)| match n {
            1 => format!("1 {one}"),
            n => format!("{n} {several}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let how = held
        .iter()
        .map(|(.., how)| *how)
        .collect::<Vec<_>>()
        .join(", ");
    Err(JoinError::NotEmpty { what, how })
}

/// A refusal from the node joined through, or a broken conversation.
fn refused(address: &str, status: &tonic::Status) -> JoinError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            if status.message().contains("transport") || status.message().is_empty() =>
        {
            JoinError::NoAnswer {
                address: address.to_owned(),
                message: status.message().to_owned(),
            }
        }
        tonic::Code::Unimplemented => JoinError::Refused {
            address: address.to_owned(),
            message: "it does not admit nodes (an agent of another version?)".into(),
        },
        _ => JoinError::Refused {
            address: address.to_owned(),
            message: status.message().to_owned(),
        },
    }
}

/// `--initial-cluster` for a joining member: every member (etcd checks the count), by name.
/// Members not started yet have no name: they get their node's name if a record has their
/// address, else a placeholder (names of other members only need to be unique).
fn initial_cluster(
    members: &[Member],
    own_id: u64,
    own_name: &str,
    nodes: &std::collections::BTreeMap<String, NodeRecord>,
) -> String {
    let mut entries = Vec::new();
    for member in members {
        let name = if member.id == own_id {
            own_name.to_owned()
        } else if !member.name.is_empty() {
            member.name.clone()
        } else {
            nodes
                .values()
                .find(|n| {
                    n.underlay_ip
                        .is_some_and(|ip| member.peer_urls.contains(&etcd::peer_url(ip)))
                })
                .map_or_else(|| format!("pending-{:x}", member.id), |n| n.name.clone())
        };
        for url in &member.peer_urls {
            entries.push(format!("{name}={url}"));
        }
    }
    entries.join(",")
}

/// Adds a learner, retrying while etcd refuses (one learner at a time in etcd 3.4, a leader
/// election, a member restarting).
async fn add_learner(store: &Store, peer_url: &str) -> Result<Member, AdmitError> {
    let deadline = tokio::time::Instant::now() + ADD_MEMBER_TIMEOUT;
    loop {
        match store.add_learner(peer_url).await {
            Ok((member, _)) => return Ok(member),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::info!("adding the etcd member (will retry): {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(AdmitError::AddMember(err)),
        }
    }
}

/// Promotes learner `id`, retrying while it catches up with the leader.
async fn promote(voters: &Store, id: u64) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + PROMOTE_TIMEOUT;
    loop {
        match voters.promote_member(id).await {
            Ok(()) => return Ok(()),
            // An earlier attempt got through but its answer was lost.
            Err(err)
                if err
                    .etcd_message()
                    .contains("can only promote a learner member") =>
            {
                if !err.etcd_message().contains("in sync") {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("promoting member {id:x} (will retry): {err}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Waits until the local member serves a linearizable read (it is a voter and caught up).
async fn wait_readable(local: &Store) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + PROMOTE_TIMEOUT;
    loop {
        match local.get(keys::CLUSTER).await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the local member: {err}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, ip: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{ip}:2380")],
            client_urls: Vec::new(),
            is_learner: false,
        }
    }

    #[test]
    fn initial_cluster_names_every_member() {
        let members = [
            member(1, "n1", "192.0.2.1"),
            member(2, "", "192.0.2.2"),
            member(3, "", "192.0.2.3"),
            member(4, "", "192.0.2.4"),
        ];
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(
            "n3".to_owned(),
            NodeRecord {
                name: "n3".into(),
                underlay_ip: Some("192.0.2.3".parse().expect("ip")),
                subnet: None,
                cluster_address: String::new(),
                version: String::new(),
                joined_at_ms: 0,
                state: NodeState::Joining,
            },
        );
        assert_eq!(
            initial_cluster(&members, 2, "n2", &nodes),
            "n1=https://192.0.2.1:2380,n2=https://192.0.2.2:2380,\
             n3=https://192.0.2.3:2380,pending-4=https://192.0.2.4:2380"
        );
    }

    #[tokio::test]
    async fn a_node_with_state_refuses_to_join() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open_redb(&dir.path().join("s.redb")).expect("open");
        let state = State::new(store);
        check_empty(&state).await.expect("an empty node may join");
        for name in ["a", "b"] {
            state
                .create_volume(&crate::model::VolumeRecord {
                    name: name.into(),
                    node: "n".into(),
                    created_at_ms: 0,
                })
                .await
                .expect("volume");
        }
        let err = check_empty(&state).await.expect_err("refused").to_string();
        assert!(err.contains("2 volumes"), "{err}");
        assert!(err.contains("hivemind volume rm"), "{err}");
    }
}
