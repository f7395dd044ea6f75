//! What the node agent reads from the Kubernetes API server on each pass: the retention
//! (`CheckpointRetention`) its retainer decides with, and the schedules (`CheckpointSchedule`)
//! whose checkpoints of this node's pods it asks the kubelet for. Whatever the API server cannot
//! answer leaves that part of the pass undone: no retention deletes on settings it could not
//! read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::kubelet::{KubeletApi, PodContainer};
use crate::kubernetes::{CheckpointSchedule, Cluster};

/// A checkpoint a schedule asked the kubelet for.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub schedule: String,
    /// `k8s:NAMESPACE/POD/CONTAINER`; the schedule's name when the schedule itself is wrong.
    pub container: String,
    /// The archives the kubelet wrote, or why there are none.
    pub result: Result<Vec<String>, String>,
}

/// Which interval of a schedule each of its containers was last checkpointed in, by
/// `SCHEDULE-UID/NAMESPACE/POD/CONTAINER`: kept in `<root>/node-agent-schedules.json`, so that a
/// restarted agent does not checkpoint again in the same interval.
pub type Slots = BTreeMap<String, u64>;

/// Asks the kubelet (through `kubelet`) for a checkpoint of each container on `node` whose
/// schedule's interval has come round since it last did. The first comes one interval after the
/// schedule was made, as the operator's do.
pub fn run_schedules(
    cluster: &Cluster,
    kubelet: &dyn KubeletApi,
    node: &str,
    slots: &mut Slots,
    now: DateTime<Utc>,
) -> Result<Vec<Requested>, crate::kubernetes::KubernetesError> {
    let mut requested = Vec::new();
    let mut seen = Slots::new();
    for schedule in cluster.schedules()? {
        let name = schedule.metadata.name.clone().unwrap_or_default();
        let failed = |error: String| Requested { schedule: name.clone(), container: name.clone(), result: Err(error) };
        let slot = match current_slot(&schedule, now) {
            Ok(Some(slot)) => slot,
            Ok(None) => continue,
            Err(error) => {
                requested.push(failed(error));
                continue;
            }
        };
        let spec = &schedule.spec;
        let uid = schedule.metadata.uid.clone().unwrap_or_else(|| name.clone());
        let pods = match cluster.running_pods(&spec.namespace, &spec.selector, node) {
            Ok(pods) => pods,
            Err(error) => {
                // What was asked in this interval stays asked, should the next list succeed.
                let prefix = format!("{uid}/");
                seen.extend(slots.iter().filter(|(key, _)| key.starts_with(&prefix)).map(|(k, v)| (k.clone(), *v)));
                requested.push(failed(error.to_string()));
                continue;
            }
        };
        for pod in pods {
            let chosen =
                pod.containers.iter().filter(|c| spec.container_names.is_empty() || spec.container_names.contains(c));
            for container in chosen {
                let key = format!("{uid}/{}/{}/{container}", pod.namespace, pod.name);
                // Asked once an interval, answered or not: a container the kubelet cannot
                // checkpoint is not asked about again every pass.
                match slots.get(&key) {
                    Some(&last) if last >= slot => {
                        seen.insert(key, last);
                        continue;
                    }
                    _ => seen.insert(key, slot),
                };
                let result = PodContainer::new(&pod.namespace, &pod.name, container)
                    .and_then(|target| kubelet.checkpoint(&target, None))
                    .map_err(|e| e.to_string());
                requested.push(Requested {
                    schedule: name.clone(),
                    container: format!("{}{}/{}/{container}", crate::kubelet::PREFIX, pod.namespace, pod.name),
                    result,
                });
            }
        }
    }
    // Containers no schedule picks any more need no remembering.
    *slots = seen;
    Ok(requested)
}

/// Which interval since its creation `schedule` is in: `None` before the first has passed.
fn current_slot(schedule: &CheckpointSchedule, now: DateTime<Utc>) -> Result<Option<u64>, String> {
    let name = schedule.metadata.name.as_deref().unwrap_or_default();
    let interval = crate::util::parse_duration(&schedule.spec.triggers.interval)
        .filter(|interval| interval.as_secs() >= 1)
        .ok_or_else(|| {
            format!(
                "schedule {name:?}: triggers.interval {:?} is not a duration of at least 1s (30m, 1h30m)",
                schedule.spec.triggers.interval
            )
        })?;
    let created = schedule
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|time| time.0.as_millisecond())
        .ok_or_else(|| format!("schedule {name:?} has no creationTimestamp"))?;
    let elapsed_ms = now.timestamp_millis() - created;
    Ok(u64::try_from(elapsed_ms).ok().map(|ms| ms / interval.as_millis() as u64).filter(|&slot| slot >= 1))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::kubelet::KubeletError;
    use crate::kubernetes::mocked;

    /// Records what it is asked for and answers as the kubelet does.
    #[derive(Default)]
    struct RecordingKubelet {
        asked: Mutex<Vec<String>>,
    }

    impl KubeletApi for RecordingKubelet {
        fn checkpoint(&self, target: &PodContainer, _: Option<u64>) -> Result<Vec<String>, KubeletError> {
            self.asked.lock().unwrap().push(target.to_string());
            if target.container == "broken" {
                return Err(KubeletError::Failed {
                    what: target.to_string(),
                    status: 500,
                    message: "CRI failed".into(),
                });
            }
            Ok(vec![format!(
                "/var/lib/kubelet/checkpoints/checkpoint-{}_{}-{}.tar",
                target.pod, target.namespace, target.container
            )])
        }
    }

    fn schedule(name: &str, created: &str, interval: &str, containers: &[&str]) -> serde_json::Value {
        serde_json::json!({"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointSchedule",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
            "spec": {"namespace": "shop", "selector": {"matchLabels": {"app": "web"}},
                     "containerNames": containers, "triggers": {"interval": interval}}})
    }

    #[test]
    fn schedules_checkpoint_this_nodes_selected_containers_once_an_interval() {
        let (cluster, seen) = mocked::cluster(|asked| {
            if asked.starts_with("GET /apis/ckpt.io/v1alpha1/checkpointschedules") {
                let items = vec![
                    schedule("hourly", "2026-12-07T04:00:00Z", "1h", &[]),
                    schedule("only-web", "2026-12-07T05:30:00Z", "30m", &["web"]),
                    schedule("young", "2026-12-07T05:55:00Z", "1h", &[]),
                    schedule("odd", "2026-12-07T04:00:00Z", "soon", &[]),
                ];
                return (
                    200,
                    serde_json::json!({"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointScheduleList", "metadata": {}, "items": items}),
                );
            }
            if asked.starts_with("GET /api/v1/namespaces/shop/pods?") {
                let pod = |name: &str, containers: &[&str]| {
                    serde_json::json!({"metadata": {"name": name, "namespace": "shop"},
                    "spec": {"containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>()}})
                };
                return (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                    "items": [pod("web-0", &["web", "broken"]), pod("web-1", &["web"])]}),
                );
            }
            mocked::not_found(asked)
        });
        let kubelet = RecordingKubelet::default();
        let at = |time: &str| DateTime::parse_from_rfc3339(time).unwrap().with_timezone(&Utc);
        let mut slots = Slots::new();

        let first = run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:10:00Z")).unwrap();
        let asked = std::mem::take(&mut *kubelet.asked.lock().unwrap());
        assert_eq!(
            asked,
            [
                "k8s:shop/web-0/web",
                "k8s:shop/web-0/broken",
                "k8s:shop/web-1/web",
                "k8s:shop/web-0/web",
                "k8s:shop/web-1/web"
            ],
            "hourly: every container; only-web: its container; young: not yet"
        );
        let failed: Vec<_> = first.iter().filter(|r| r.result.is_err()).collect();
        assert_eq!(failed.len(), 2, "{first:#?}");
        assert!(failed.iter().any(|r| r.container == "k8s:shop/web-0/broken"));
        assert!(
            failed
                .iter()
                .any(|r| r.schedule == "odd" && r.result.as_ref().unwrap_err().contains("triggers.interval \"soon\""))
        );
        let pods_query = seen.lock().unwrap().iter().find(|s| s.contains("/pods?")).cloned().unwrap();
        assert!(
            pods_query.contains("labelSelector=app=web")
                && pods_query.contains("fieldSelector=spec.nodeName=node-1,status.phase=Running"),
            "{pods_query}"
        );

        // Within the same intervals, nothing more; the next of only-web's comes first.
        run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:20:00Z")).unwrap();
        assert!(kubelet.asked.lock().unwrap().is_empty());
        run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:31:00Z")).unwrap();
        assert_eq!(std::mem::take(&mut *kubelet.asked.lock().unwrap()), ["k8s:shop/web-0/web", "k8s:shop/web-1/web"]);
        // A restarted agent reads its slots back and does not ask again.
        let mut restarted: Slots = serde_json::from_str(&serde_json::to_string(&slots).unwrap()).unwrap();
        run_schedules(&cluster, &kubelet, "node-1", &mut restarted, at("2026-12-07T06:32:00Z")).unwrap();
        assert!(kubelet.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn a_pod_list_that_fails_once_does_not_make_the_interval_ask_again() {
        let pod_lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = pod_lists.clone();
        let (cluster, _) = mocked::cluster(move |asked| {
            if asked.starts_with("GET /apis/ckpt.io/v1alpha1/checkpointschedules") {
                let items = vec![schedule("hourly", "2026-12-07T04:00:00Z", "1h", &["web"])];
                return (
                    200,
                    serde_json::json!({"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointScheduleList", "metadata": {}, "items": items}),
                );
            }
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                return (
                    500,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "etcd is away", "reason": "InternalError", "code": 500}),
                );
            }
            let pod = serde_json::json!({"metadata": {"name": "web-0", "namespace": "shop"}, "spec": {"containers": [{"name": "web"}]}});
            (200, serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}))
        });
        let kubelet = RecordingKubelet::default();
        let at = |time: &str| DateTime::parse_from_rfc3339(time).unwrap().with_timezone(&Utc);
        let mut slots = Slots::new();
        run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:10:00Z")).unwrap();
        let failed = run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:20:00Z")).unwrap();
        assert!(failed[0].result.as_ref().unwrap_err().contains("etcd is away"), "{failed:#?}");
        run_schedules(&cluster, &kubelet, "node-1", &mut slots, at("2026-12-07T06:30:00Z")).unwrap();
        assert_eq!(*kubelet.asked.lock().unwrap(), ["k8s:shop/web-0/web"], "once in the interval");
        assert_eq!(pod_lists.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn an_api_server_that_cannot_list_schedules_runs_none() {
        let (cluster, _) = mocked::cluster(|_| {
            (
                403,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "forbidden", "reason": "Forbidden", "code": 403}),
            )
        });
        let kubelet = RecordingKubelet::default();
        let error = run_schedules(&cluster, &kubelet, "node-1", &mut Slots::new(), Utc::now()).unwrap_err().to_string();
        assert!(error.contains("list CheckpointSchedules") && error.contains("forbidden"), "{error}");
        assert!(kubelet.asked.lock().unwrap().is_empty());
    }
}
