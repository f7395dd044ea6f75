//! Compliance: a gate. A container's data class (a label) decides where its checkpoints may go
//! and whether its volumes may leave with them. Unlabelled containers are handled as the
//! settings say.

use std::collections::BTreeMap;

use ckpt_guest_sdk::export_gate;
use ckpt_guest_sdk::types::*;
use ckpt_guest_sdk::{Describe, Gate, Level, label, log};
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_label")]
    label: String,
    classes: BTreeMap<String, Class>,
    /// `deny`, `allow`, or the name of a class to treat unlabelled containers as.
    #[serde(default = "default_unlabelled")]
    unlabelled: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Class {
    /// Allowed target prefixes: a path prefix for archives, `image:<prefix>` for images.
    targets: Vec<String>,
    #[serde(default = "yes")]
    volumes: bool,
    #[serde(default = "yes")]
    rootfs: bool,
    /// Checkpoints of this class leave only sealed (encrypted): a plaintext export is denied.
    #[serde(default)]
    sealed: bool,
    /// Checkpoints of this class leave only signed.
    #[serde(default)]
    signed: bool,
}

fn default_label() -> String {
    "data-class".into()
}
fn default_unlabelled() -> String {
    "deny".into()
}
fn yes() -> bool {
    true
}

fn target_name(target: &ExportTarget) -> String {
    match target.kind {
        TargetKind::Archive => target.location.clone(),
        TargetKind::Image => format!("image:{}", target.location),
        TargetKind::Registry => format!("registry:{}", target.location),
    }
}

pub struct Compliance;

impl Describe for Compliance {
    type Settings = Settings;
    const NAME: &'static str = "compliance";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn validate(s: &Settings) -> Result<(), String> {
        if s.unlabelled != "deny" && s.unlabelled != "allow" && !s.classes.contains_key(&s.unlabelled) {
            return Err(format!("settings: \"unlabelled\" is {:?}: use deny, allow or a class name", s.unlabelled));
        }
        Ok(())
    }
}

impl Gate for Compliance {
    fn gate(s: &Settings, facts: ExportFacts) -> GateDecision {
        let class_name = match label(&facts.container, &s.label) {
            Some(class) => class.to_string(),
            None if s.unlabelled == "allow" => return GateDecision::Allow,
            None if s.unlabelled == "deny" => {
                return GateDecision::Deny(format!("container {:?} has no {:?} label", facts.container.name, s.label));
            }
            None => s.unlabelled.clone(),
        };
        let Some(class) = s.classes.get(&class_name) else {
            return GateDecision::Deny(format!("data class {class_name:?} is not known to this policy"));
        };
        let target = target_name(&facts.target);
        if !class.targets.iter().any(|prefix| target.starts_with(prefix.as_str())) {
            return GateDecision::Deny(format!("data class {class_name:?} may not be exported to {target}"));
        }
        if class.sealed && facts.target.sealed_to.is_empty() {
            return GateDecision::Deny(format!(
                "data class {class_name:?} leaves only sealed, and the export to {target} is in the clear"
            ));
        }
        if class.signed && !facts.target.signed {
            return GateDecision::Deny(format!(
                "data class {class_name:?} leaves only signed, and the export to {target} is not"
            ));
        }
        let drop_volumes = !class.volumes && facts.has_volumes;
        let drop_rootfs = !class.rootfs && facts.has_rootfs;
        if drop_volumes || drop_rootfs {
            log(Level::Info, &format!("narrowing export of {:?} for data class {class_name:?}", facts.container.name));
            return GateDecision::Narrow(Narrowing {
                drop_rootfs,
                drop_volumes,
                reason: format!(
                    "data class {class_name:?} forbids exporting {}",
                    if drop_volumes { "volumes" } else { "rootfs changes" }
                ),
            });
        }
        GateDecision::Allow
    }
}

export_gate!(Compliance);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::{sample_export_facts, settings_of};

    const SETTINGS: &str = r#"{"classes": {"public": {"targets": ["/var/tmp/"]}, "pii": {"targets": ["/secure/"], "volumes": false}}, "unlabelled": "public"}"#;

    fn settings() -> Settings {
        settings_of::<Compliance>(SETTINGS).unwrap()
    }

    fn export(class: Option<&str>, location: &str, has_volumes: bool) -> ExportFacts {
        let mut facts = sample_export_facts("c", location);
        if let Some(class) = class {
            facts.container.labels.push(KeyValue { key: "data-class".into(), value: class.into() });
        }
        facts.has_volumes = has_volumes;
        facts
    }

    #[test]
    fn gates_by_class() {
        assert_eq!(Compliance::gate(&settings(), export(None, "/var/tmp/a.tar", true)), GateDecision::Allow);
        assert!(matches!(
            Compliance::gate(&settings(), export(Some("pii"), "/var/tmp/a.tar", true)),
            GateDecision::Deny(_)
        ));
        let GateDecision::Narrow(n) = Compliance::gate(&settings(), export(Some("pii"), "/secure/a.tar", true)) else {
            panic!()
        };
        assert!(n.drop_volumes && !n.drop_rootfs);
        assert!(matches!(
            Compliance::gate(&settings(), export(Some("other"), "/var/tmp/a", false)),
            GateDecision::Deny(_)
        ));
        assert!(settings_of::<Compliance>(r#"{"classes":{},"unlabelled":"nope"}"#).is_err());
    }

    #[test]
    fn a_sealed_class_leaves_only_sealed_and_a_signed_class_only_signed() {
        let settings = settings_of::<Compliance>(
            r#"{"classes": {"secret": {"targets": ["/"], "sealed": true, "signed": true}}, "unlabelled": "deny"}"#,
        )
        .unwrap();
        let GateDecision::Deny(why) = Compliance::gate(&settings, export(Some("secret"), "/a.tar", false)) else {
            panic!("a plaintext export of a sealed class")
        };
        assert!(why.contains("in the clear"), "{why}");
        let mut sealed = export(Some("secret"), "/a.tar", false);
        sealed.target.sealed_to = vec!["age1example".into()];
        let GateDecision::Deny(why) = Compliance::gate(&settings, sealed.clone()) else { panic!("unsigned") };
        assert!(why.contains("only signed"), "{why}");
        sealed.target.signed = true;
        assert_eq!(Compliance::gate(&settings, sealed), GateDecision::Allow);
    }
}
