//! The checkpoint-restore-operator's retention, as a retainer: `ckpt node-agent --retainer`
//! asks it about the checkpoints of each container of a Kubernetes node, then of its pod, then
//! of its namespace, newest first, with the operator's own field names and defaults. Pinned
//! checkpoints (the operator's `.keep`) count towards the limits but are never deleted. It is a
//! `cluster-retainer`: told that a container, pod or namespace is gone, it deletes its
//! checkpoints where `retainOrphan` is false, as the operator does.

use ckpt_guest_sdk::cluster::ClusterFacts;
use ckpt_guest_sdk::types::{Deletion, RetainFacts};
use ckpt_guest_sdk::{ClusterRetainer, Describe, Level as LogLevel, export_cluster_retainer};

/// A size as Kubernetes writes a `resource.Quantity` for bytes (`500Mi`, `2Gi`, `1.5G`, `1e9`,
/// or a plain number), in bytes, rounded up as Kubernetes rounds a quantity to an integer. It is
/// read with the settings, so that one the retainer cannot read is refused then, instead of
/// being taken for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(with = "WrittenQuantity")]
pub struct Quantity(u64);

/// How a quantity may be written: a number, or Kubernetes' text.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // read only to make a `Quantity`, and for the settings' schema
enum WrittenQuantity {
    Bytes(u64),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Quantity, D::Error> {
        match WrittenQuantity::deserialize(deserializer)? {
            WrittenQuantity::Bytes(bytes) => Ok(Quantity(bytes)),
            WrittenQuantity::Text(text) => Quantity::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a Kubernetes quantity of bytes (500Mi, 2Gi, 1.5G, 1e9)"
                ))
            }),
        }
    }
}

impl Quantity {
    fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(text.len());
        let (number, suffix) = text.split_at(number_end);
        let number: f64 = number.parse().ok()?;
        let scale: f64 = match suffix {
            "" => 1.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
            _ => return None,
        };
        let bytes = (number * scale).ceil();
        (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(Quantity(bytes as u64))
    }
}

/// The operator's `globalPolicy` (its limits at each level, with the controller's defaults) and
/// its `containerPolicies`, `podPolicies` and `namespacePolicies`, which replace the global
/// limits of one level for the containers, pods and namespaces they name.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// Keep the checkpoints of containers, pods and namespaces that are gone; `false` deletes
    /// them once the API server says so.
    pub retain_orphan: bool,
    /// At most this many checkpoints of a namespace, the newest kept.
    pub max_checkpoints_per_namespace: u32,
    /// At most this many checkpoints of a pod, the newest kept.
    pub max_checkpoints_per_pod: u32,
    /// At most this many checkpoints of a container, the newest kept.
    pub max_checkpoints_per_container: u32,
    /// A checkpoint bigger than this is deleted.
    pub max_checkpoint_size: Quantity,
    /// At most this many bytes of a namespace's checkpoints, the newest kept.
    pub max_total_size_per_namespace: Quantity,
    /// At most this many bytes of a pod's checkpoints, the newest kept.
    pub max_total_size_per_pod: Quantity,
    /// At most this many bytes of a container's checkpoints, the newest kept.
    pub max_total_size_per_container: Quantity,
    pub container_policies: Vec<ContainerPolicy>,
    pub pod_policies: Vec<PodPolicy>,
    pub namespace_policies: Vec<NamespacePolicy>,
}

impl Default for Settings {
    fn default() -> Settings {
        let hundred_gi = || Quantity(100 << 30);
        Settings {
            retain_orphan: true,
            max_checkpoints_per_namespace: 30,
            max_checkpoints_per_pod: 20,
            max_checkpoints_per_container: 10,
            max_checkpoint_size: hundred_gi(),
            max_total_size_per_namespace: hundred_gi(),
            max_total_size_per_pod: hundred_gi(),
            max_total_size_per_container: hundred_gi(),
            container_policies: Vec::new(),
            pod_policies: Vec::new(),
            namespace_policies: Vec::new(),
        }
    }
}

/// A `containerPolicies` entry: one container's limits, in place of the global per-container
/// ones; what it leaves out is the global's.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPolicy {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub retain_orphan: Option<bool>,
    pub max_checkpoints: Option<u32>,
    pub max_checkpoint_size: Option<Quantity>,
    pub max_total_size: Option<Quantity>,
}

/// A `podPolicies` entry: one pod's limits, in place of the global per-pod ones.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPolicy {
    pub namespace: String,
    pub pod: String,
    pub retain_orphan: Option<bool>,
    pub max_checkpoints: Option<u32>,
    pub max_checkpoint_size: Option<Quantity>,
    pub max_total_size: Option<Quantity>,
}

/// A `namespacePolicies` entry: one namespace's limits, in place of the global per-namespace
/// ones.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacePolicy {
    pub namespace: String,
    pub retain_orphan: Option<bool>,
    pub max_checkpoints: Option<u32>,
    pub max_checkpoint_size: Option<Quantity>,
    pub max_total_size: Option<Quantity>,
}

/// The limits one of those policies sets: `retainOrphan`, `maxCheckpoints`,
/// `maxCheckpointSize` and `maxTotalSize`.
type Limits<'a> = (Option<bool>, Option<u32>, Option<&'a Quantity>, Option<&'a Quantity>);

/// What the node agent asks about, read from the facts' `container-id`: a container
/// (`k8s:NAMESPACE/POD/CONTAINER`), a pod (`k8s:NAMESPACE/POD`) or a namespace (`k8s:NAMESPACE`).
/// Any other name is one container's, as ckpt names its own.
enum Level<'a> {
    Namespace(&'a str),
    Pod(&'a str, &'a str),
    Container(Option<(&'a str, &'a str, &'a str)>),
}

impl Level<'_> {
    fn of(container_id: &str) -> Level<'_> {
        let Some(name) = container_id.strip_prefix("k8s:") else { return Level::Container(None) };
        match name.split('/').collect::<Vec<_>>().as_slice() {
            [namespace] => Level::Namespace(namespace),
            [namespace, pod] => Level::Pod(namespace, pod),
            [namespace, pod, container] => Level::Container(Some((namespace, pod, container))),
            _ => Level::Container(None),
        }
    }
}

/// The limits that hold at one level, sizes in bytes, with the names the operator gives them
/// (for the reasons).
struct Applied {
    retain_orphan: bool,
    max_checkpoints: (u32, &'static str),
    max_size: u64,
    max_total: (u64, &'static str),
}

impl Settings {
    fn applied(&self, level: &Level<'_>) -> Applied {
        let (limits, global_count, global_total, names): (Option<Limits<'_>>, _, _, _) = match *level {
            Level::Namespace(namespace) => (
                self.namespace_policies.iter().find(|p| p.namespace == namespace).map(|p| {
                    (p.retain_orphan, p.max_checkpoints, p.max_checkpoint_size.as_ref(), p.max_total_size.as_ref())
                }),
                self.max_checkpoints_per_namespace,
                &self.max_total_size_per_namespace,
                ("maxCheckpointsPerNamespace", "maxTotalSizePerNamespace"),
            ),
            Level::Pod(namespace, pod) => (
                self.pod_policies.iter().find(|p| p.namespace == namespace && p.pod == pod).map(|p| {
                    (p.retain_orphan, p.max_checkpoints, p.max_checkpoint_size.as_ref(), p.max_total_size.as_ref())
                }),
                self.max_checkpoints_per_pod,
                &self.max_total_size_per_pod,
                ("maxCheckpointsPerPod", "maxTotalSizePerPod"),
            ),
            Level::Container(named) => (
                named.and_then(|(namespace, pod, container)| {
                    self.container_policies
                        .iter()
                        .find(|p| p.namespace == namespace && p.pod == pod && p.container == container)
                        .map(|p| {
                            (
                                p.retain_orphan,
                                p.max_checkpoints,
                                p.max_checkpoint_size.as_ref(),
                                p.max_total_size.as_ref(),
                            )
                        })
                }),
                self.max_checkpoints_per_container,
                &self.max_total_size_per_container,
                ("maxCheckpointsPerContainer", "maxTotalSizePerContainer"),
            ),
        };
        let (count_name, total_name) = match limits {
            Some(_) => ("the policy's maxCheckpoints", "the policy's maxTotalSize"),
            None => names,
        };
        let (retain_orphan, count, size, total) = limits.unwrap_or_default();
        Applied {
            retain_orphan: retain_orphan.unwrap_or(self.retain_orphan),
            max_checkpoints: (count.unwrap_or(global_count), count_name),
            max_size: size.unwrap_or(&self.max_checkpoint_size).0,
            max_total: (total.unwrap_or(global_total).0, total_name),
        }
    }
}

pub struct KubeletRetainer;

impl Describe for KubeletRetainer {
    type Settings = Settings;
    const NAME: &'static str = "kubelet-retainer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

impl ClusterRetainer for KubeletRetainer {
    fn retain(settings: &Settings, facts: RetainFacts, cluster: ClusterFacts) -> Vec<Deletion> {
        let Applied {
            retain_orphan,
            max_checkpoints: (max_count, count_name),
            max_size,
            max_total: (max_total, total_name),
        } = settings.applied(&Level::of(&facts.container_id));
        if !retain_orphan {
            match cluster.exists {
                Some(false) => {
                    let reason = format!("{} is gone from the cluster, and retainOrphan is false", facts.container_id);
                    let orphans = facts.entries.iter().filter(|entry| !entry.pinned);
                    return orphans.map(|entry| Deletion { id: entry.id.clone(), reason: reason.clone() }).collect();
                }
                Some(true) => {}
                None => ckpt_guest_sdk::log(
                    LogLevel::Info,
                    &format!(
                        "retainOrphan is false, but whether {} is gone is not known: it counts as there",
                        facts.container_id
                    ),
                ),
            }
        }
        let (mut kept, mut kept_bytes) = (0u32, 0u64);
        let mut deletions = Vec::new();
        for entry in &facts.entries {
            let reason = if entry.size_bytes > max_size {
                Some(format!("{} bytes, over maxCheckpointSize ({max_size} bytes)", entry.size_bytes))
            } else if kept >= max_count {
                Some(format!("older than the newest {max_count} of {} ({count_name})", facts.container_id))
            } else if kept_bytes + entry.size_bytes > max_total {
                Some(format!("keeping it would pass {total_name} ({max_total} bytes) of {}", facts.container_id))
            } else {
                None
            };
            match reason {
                Some(reason) if !entry.pinned => deletions.push(Deletion { id: entry.id.clone(), reason }),
                _ => {
                    kept += 1;
                    kept_bytes += entry.size_bytes;
                }
            }
        }
        deletions
    }
}

export_cluster_retainer!(KubeletRetainer);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::cluster::Level as ClusterLevel;
    use ckpt_guest_sdk::types::{CatalogEntry, EntryKind};

    fn entry(id: &str, size: u64, pinned: bool) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            kind: EntryKind::Image,
            location: format!("localhost/checkpoints/{id}:1"),
            size_bytes: size,
            created: "2026-12-07T00:00:00Z".into(),
            created_unix_ms: 0,
            trigger: "kubelet".into(),
            schedule: None,
            pinned,
            policy_digest: String::new(),
        }
    }

    fn deleted(settings: &str, entries: Vec<CatalogEntry>) -> Vec<String> {
        deleted_at("k8s:default/web-0/web", settings, entries)
    }

    fn deleted_at(scope: &str, settings: &str, entries: Vec<CatalogEntry>) -> Vec<String> {
        deleted_where(scope, None, settings, entries)
    }

    fn deleted_where(scope: &str, exists: Option<bool>, settings: &str, entries: Vec<CatalogEntry>) -> Vec<String> {
        let level = match scope.matches('/').count() {
            0 => ClusterLevel::Namespace,
            1 => ClusterLevel::Pod,
            _ => ClusterLevel::Container,
        };
        let settings: Settings = ckpt_guest_sdk::parse_settings(settings).unwrap();
        let facts = RetainFacts {
            container_id: scope.into(),
            container_name: scope.into(),
            entries,
            now: "2026-12-07T00:00:00Z".into(),
            now_unix_ms: 0,
        };
        let cluster = ClusterFacts { level, exists };
        KubeletRetainer::retain(&settings, facts, cluster).into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn keeps_the_newest_by_count_and_pinned_ones_count_but_stay() {
        let entries = vec![entry("d", 1, false), entry("c", 1, true), entry("b", 1, false), entry("a", 1, false)];
        assert_eq!(deleted(r#"{"maxCheckpointsPerContainer": 2}"#, entries), vec!["b", "a"]);
    }

    #[test]
    fn sizes_are_kubernetes_quantities() {
        let entries = vec![entry("c", 3 << 20, false), entry("b", 600 << 10, false), entry("a", 600 << 10, false)];
        assert_eq!(deleted(r#"{"maxCheckpointSize": "2Mi"}"#, entries.clone()), vec!["c"]);
        assert_eq!(deleted(r#"{"maxTotalSizePerContainer": "4000000"}"#, entries.clone()), vec!["a"]);
        assert_eq!(deleted(r#"{"maxCheckpointSize": "1.5Mi"}"#, entries.clone()), vec!["c"]);
        assert_eq!(deleted(r#"{"maxTotalSizePerContainer": "4e6"}"#, entries.clone()), vec!["a"]);
        assert_eq!(deleted(r#"{"maxCheckpointSize": 1048576}"#, entries), vec!["c"]);
        let refused = ckpt_guest_sdk::parse_settings::<Settings>(r#"{"maxCheckpointSize": "2 furlongs"}"#).unwrap_err();
        assert!(refused.contains("\"2 furlongs\" is not a Kubernetes quantity"), "refused when read: {refused}");
        assert!(ckpt_guest_sdk::parse_settings::<Settings>(r#"{"maxTotalSizePerPod": "-1Gi"}"#).is_err());
        assert!(ckpt_guest_sdk::parse_settings::<Settings>(r#"{"max-checkpoints": 3}"#).is_err());
    }

    #[test]
    fn pods_and_namespaces_have_limits_of_their_own_and_policies_name_them() {
        let five = || (0..5).map(|i| entry(&format!("e{i}"), 1, false)).collect::<Vec<_>>();
        let settings = r#"{"maxCheckpointsPerPod": 3, "maxCheckpointsPerNamespace": 4,
            "podPolicies": [{"namespace": "default", "pod": "db-0", "maxCheckpoints": 1}],
            "containerPolicies": [{"namespace": "default", "pod": "web-0", "container": "web", "maxCheckpoints": 2}]}"#;
        assert_eq!(deleted_at("k8s:default/web-0", settings, five()), vec!["e3", "e4"]);
        assert_eq!(deleted_at("k8s:default/db-0", settings, five()), vec!["e1", "e2", "e3", "e4"]);
        assert_eq!(deleted_at("k8s:default", settings, five()), vec!["e4"]);
        assert_eq!(deleted_at("k8s:default/web-0/web", settings, five()), vec!["e2", "e3", "e4"]);
        assert_eq!(deleted_at("k8s:default/web-0/sidecar", settings, five()), Vec::<String>::new());
        // The controller's defaults: 10 a container, 20 a pod, 30 a namespace.
        let many = |n: usize| (0..n).map(|i| entry(&format!("e{i}"), 1, false)).collect::<Vec<_>>();
        assert_eq!(deleted_at("k8s:default/web-0", "{}", many(21)), vec!["e20"]);
        assert_eq!(deleted_at("k8s:default", "{}", many(31)), vec!["e30"]);
        assert!(ckpt_guest_sdk::parse_settings::<Settings>(r#"{"podPolicies": [{"pod": "x"}]}"#).is_err());
    }

    #[test]
    fn orphans_go_only_where_retain_orphan_is_false_and_the_cluster_says_they_are_gone() {
        let three = || vec![entry("c", 1, false), entry("b", 1, true), entry("a", 1, false)];
        let settings = r#"{"podPolicies": [{"namespace": "shop", "pod": "web-0", "retainOrphan": false}],
            "namespacePolicies": [{"namespace": "old", "retainOrphan": false}]}"#;
        // Gone, and not to be kept: every entry but the pinned one.
        assert_eq!(deleted_where("k8s:shop/web-0", Some(false), settings, three()), vec!["c", "a"]);
        assert_eq!(deleted_where("k8s:old", Some(false), settings, three()), vec!["c", "a"]);
        // Still there, or not known to be gone: only the limits apply.
        assert!(deleted_where("k8s:shop/web-0", Some(true), settings, three()).is_empty());
        assert!(deleted_where("k8s:shop/web-0", None, settings, three()).is_empty());
        // Gone, but kept: the operator's default, and what another pod's policy leaves alone.
        assert!(deleted_where("k8s:shop/web-1", Some(false), settings, three()).is_empty());
        assert!(deleted_where("k8s:shop/web-1/web", Some(false), "{}", three()).is_empty());
        // The global setting holds where a policy says nothing.
        let global =
            r#"{"retainOrphan": false, "podPolicies": [{"namespace": "shop", "pod": "web-0", "retainOrphan": true}]}"#;
        assert_eq!(deleted_where("k8s:shop/db-0/db", Some(false), global, three()), vec!["c", "a"]);
        assert!(deleted_where("k8s:shop/web-0", Some(false), global, three()).is_empty());
    }
}
