//! ckpt's custom resources, with the checkpoint-restore-operator's field names (its
//! `CheckpointRestoreOperator` retention policies and its `CheckpointSchedule`), in ckpt's own
//! group so that both can be installed side by side. Both are cluster-scoped: a schedule names
//! the namespace whose pods it checkpoints, and only a cluster's administrators may do that.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many checkpoints a node keeps, in the operator's vocabulary; the node agent's retainer
/// (`policies/kubelet-retainer`) decides with it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "ckpt.io", version = "v1alpha1", kind = "CheckpointRetention", shortname = "ckptretention")]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRetentionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_policy: Option<GlobalPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_policies: Vec<ContainerPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_policies: Vec<PodPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_policies: Vec<NamespacePolicy>,
}

/// The limits at each level; what is left out takes the operator's defaults (30, 20 and 10
/// checkpoints; 100Gi).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalPolicy {
    /// Keep the checkpoints of containers, pods and namespaces that are gone (the default);
    /// `false` deletes them once the API server says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_orphan: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoints_per_namespace: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoints_per_pod: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoints_per_container: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoint_size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size_per_namespace: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size_per_pod: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size_per_container: Option<Quantity>,
}

/// One level's limits for the objects a policy names; what is left out is the global's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// `false` deletes the checkpoints of what the policy names once it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_orphan: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoints: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoint_size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size: Option<Quantity>,
}

/// One container's limits, in place of the global per-container ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPolicy {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    #[serde(flatten)]
    pub limits: Limits,
}

/// One pod's limits, in place of the global per-pod ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPolicy {
    pub namespace: String,
    pub pod: String,
    #[serde(flatten)]
    pub limits: Limits,
}

/// One namespace's limits, in place of the global per-namespace ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePolicy {
    pub namespace: String,
    #[serde(flatten)]
    pub limits: Limits,
}

impl CheckpointRetentionSpec {
    /// The settings of the kubelet retainer: `globalPolicy`'s fields at the top, the policies
    /// as they are.
    pub fn retainer_settings(&self) -> serde_json::Value {
        let mut settings = serde_json::Map::new();
        if let Some(global) = &self.global_policy
            && let serde_json::Value::Object(fields) = serde_json::to_value(global).expect("json")
        {
            settings.extend(fields);
        }
        fn each<P: Serialize>(policies: &[P]) -> Vec<serde_json::Value> {
            policies.iter().map(|p| serde_json::to_value(p).expect("json")).collect()
        }
        for (key, policies) in [
            ("containerPolicies", each(&self.container_policies)),
            ("podPolicies", each(&self.pod_policies)),
            ("namespacePolicies", each(&self.namespace_policies)),
        ] {
            if !policies.is_empty() {
                settings.insert(key.to_string(), serde_json::Value::Array(policies));
            }
        }
        serde_json::Value::Object(settings)
    }
}

/// Checkpoints of the running pods a selector picks in one namespace, on each node by that
/// node's agent, every interval.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "ckpt.io", version = "v1alpha1", kind = "CheckpointSchedule", shortname = "ckptschedule")]
#[serde(rename_all = "camelCase")]
pub struct CheckpointScheduleSpec {
    pub namespace: String,
    pub selector: LabelSelector,
    /// The containers of each pod to checkpoint; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_names: Vec<String>,
    pub triggers: Triggers,
}

/// When a schedule checkpoints. Only `interval` is supported: the operator's resource
/// thresholds, events and annotations need a controller beside the API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// A duration (`30m`, `1h30m`, at least `1s`); the first checkpoint comes one interval after
    /// the schedule was made.
    pub interval: String,
}

/// The CustomResourceDefinitions to install (`deploy/kubernetes/crds.yaml`), as YAML: one JSON
/// document each, which YAML reads as it is.
pub fn definitions() -> String {
    use kube::CustomResourceExt;
    let mut out =
        String::from("# ckpt's custom resources (ckpt.io/v1alpha1), made by `ckpt node-agent --print-crds`.\n");
    for crd in [CheckpointRetention::crd(), CheckpointSchedule::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&crd).expect("json"));
        out.push('\n');
    }
    out
}
