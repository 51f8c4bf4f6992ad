//! CPU and memory of a container, from containerd's task metrics.
//!
//! containerd answers with cgroup statistics in a protobuf `Any` whose schema lives in
//! containerd's cgroups library, not in containerd-client; the few fields used here are
//! declared below with their field numbers (v1: `io.containerd.cgroups.v1.Metrics`,
//! v2: `io.containerd.cgroups.v2.Metrics`).

use containerd_client::services::v1::{MetricsRequest, tasks_client::TasksClient};
use prost::Message;

use super::{Runtime, RuntimeError};

/// What `container-info` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since start, nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// 0 when unlimited.
    pub memory_limit_bytes: u64,
}

mod v1 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
    }
}

mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
    }
}

/// cgroup v1 reports "no limit" as a huge number.
const UNLIMITED_V1: u64 = 1 << 62;

/// Decodes containerd's metrics `Any`. Memory excludes inactive file cache, as `docker stats` does.
pub fn decode(type_url: &str, bytes: &[u8]) -> Option<Usage> {
    if type_url.ends_with("cgroups.v1.Metrics") {
        let m = v1::Metrics::decode(bytes).ok()?;
        let memory = m.memory.unwrap_or_default();
        let entry = memory.usage.unwrap_or_default();
        Some(Usage {
            cpu_ns: m.cpu.and_then(|c| c.usage).map_or(0, |u| u.total),
            memory_bytes: entry.usage.saturating_sub(memory.inactive_file),
            memory_limit_bytes: if entry.limit >= UNLIMITED_V1 {
                0
            } else {
                entry.limit
            },
        })
    } else if type_url.ends_with("cgroups.v2.Metrics") {
        let m = v2::Metrics::decode(bytes).ok()?;
        let memory = m.memory.unwrap_or_default();
        Some(Usage {
            cpu_ns: m.cpu.map_or(0, |c| c.usage_usec.saturating_mul(1000)),
            memory_bytes: memory.usage.saturating_sub(memory.inactive_file),
            memory_limit_bytes: if memory.usage_limit == u64::MAX {
                0
            } else {
                memory.usage_limit
            },
        })
    } else {
        None
    }
}

impl Runtime {
    /// Current usage of a running container; `None` if it has no task.
    pub async fn usage(&self, id: &str) -> Result<Option<Usage>, RuntimeError> {
        let metrics = TasksClient::new(self.channel.clone())
            .metrics(self.request(MetricsRequest {
                filters: vec![format!("id=={id}")],
            }))
            .await
            .map_err(|status| self.call_error("read metrics of", id, &status))?
            .into_inner()
            .metrics;
        Ok(metrics
            .into_iter()
            .find(|m| m.id == id)
            .and_then(|m| m.data)
            .and_then(|any| decode(&any.type_url, &any.value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_v1_and_v2() {
        let v1 = v1::Metrics {
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage { total: 5_000 }),
            }),
            memory: Some(v1::MemoryStat {
                inactive_file: 100,
                usage: Some(v1::MemoryEntry {
                    limit: 64 << 20,
                    usage: 1100,
                }),
            }),
        };
        let usage = decode("io.containerd.cgroups.v1.Metrics", &v1.encode_to_vec()).expect("v1");
        assert_eq!(
            usage,
            Usage {
                cpu_ns: 5_000,
                memory_bytes: 1000,
                memory_limit_bytes: 64 << 20
            }
        );

        let v2 = v2::Metrics {
            cpu: Some(v2::CpuStat { usage_usec: 7 }),
            memory: Some(v2::MemoryStat {
                inactive_file: 0,
                usage: 4096,
                usage_limit: u64::MAX,
            }),
        };
        let usage = decode("io.containerd.cgroups.v2.Metrics", &v2.encode_to_vec()).expect("v2");
        assert_eq!(
            usage,
            Usage {
                cpu_ns: 7_000,
                memory_bytes: 4096,
                memory_limit_bytes: 0
            }
        );
        assert!(decode("something.else", &[]).is_none());
    }
}
