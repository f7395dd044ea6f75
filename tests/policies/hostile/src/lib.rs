//! Misbehaves as its settings say: `{"mode": "loop" | "alloc" | "recurse" | "read-file" |
//! "connect" | "oversized" | "panic" | "log-flood" | "sleep" | "sleep-forever" | "read-stdin" |
//! "ok"}`. Each misbehaviour must become a denial in ckpt.

// Written against the 0.1.0 contract on purpose: ckpt must keep loading such components.
#![allow(deprecated)]

use ckpt_guest_sdk::v1::types::*;
use ckpt_guest_sdk::v1::{Guest, Level, export_policy, info, log, plan_from_request};

const MODES: &[&str] = &[
    "loop",
    "alloc",
    "recurse",
    "read-file",
    "connect",
    "oversized",
    "panic",
    "log-flood",
    "sleep",
    "sleep-forever",
    "read-stdin",
    "ok",
];

fn mode(settings: &str) -> String {
    let value: ckpt_guest_sdk::v1::serde_json::Value =
        ckpt_guest_sdk::v1::serde_json::from_str(settings).unwrap_or_default();
    value["mode"].as_str().unwrap_or("ok").to_string()
}

// Unbounded on purpose: the host must stop it with its stack limit.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = *pad;
    recurse(depth + 1, &mut next) + u64::from(next[0])
}

fn misbehave(mode: &str) -> Option<PlanDecision> {
    match mode {
        "loop" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(vec![1u8; 64 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recurse" => {
            let mut pad = [0u8; 256];
            Some(ckpt_guest_sdk::v1::deny(format!("{}", recurse(0, &mut pad))))
        }
        "read-file" => {
            let secret = std::fs::read_to_string("/etc/shadow").expect("reading a host file");
            Some(ckpt_guest_sdk::v1::deny(secret))
        }
        "connect" => {
            let stream = std::net::TcpStream::connect("127.0.0.1:22").expect("opening a socket");
            Some(ckpt_guest_sdk::v1::deny(format!("{stream:?}")))
        }
        "panic" => panic!("this policy panics on purpose"),
        // The host's timers are always due: the hour passes at once and the policy answers.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Some(ckpt_guest_sdk::v1::deny("woke up after sleeping an hour".to_string()))
        }
        // So an endless sleep is a busy loop, which the fuel stops.
        "sleep-forever" => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        "read-stdin" => {
            let mut line = String::new();
            let read = std::io::stdin().read_line(&mut line);
            Some(ckpt_guest_sdk::v1::deny(format!("stdin gave {read:?}")))
        }
        "log-flood" => {
            for i in 0..100_000 {
                log(Level::Info, &format!("line {i} {}", "x".repeat(1000)));
            }
            None
        }
        _ => None,
    }
}

pub struct Hostile;

impl Guest for Hostile {
    fn describe() -> PolicyInfo {
        info("hostile", "0.1.0", &[DecisionKind::Plan, DecisionKind::Gate], r#"{"type":"object"}"#)
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        let mode = mode(&settings);
        if MODES.contains(&mode.as_str()) {
            Ok(())
        } else {
            Err(format!("unknown mode {mode:?}; use one of {MODES:?}"))
        }
    }

    fn plan(settings: String, facts: CheckpointFacts) -> PlanDecision {
        let mode = mode(&settings);
        if mode == "oversized" {
            let mut plan = plan_from_request(&facts);
            plan.reasons = vec!["x".repeat(1 << 20); 64];
            return PlanDecision::Plan(plan);
        }
        misbehave(&mode).unwrap_or_else(|| PlanDecision::Plan(plan_from_request(&facts)))
    }

    fn after_round(_settings: String, _facts: CheckpointFacts, _rounds: Vec<RoundStats>) -> RoundDecision {
        RoundDecision { action: RoundAction::DumpNow, reason: String::new() }
    }

    fn gate(settings: String, _facts: ExportFacts) -> GateDecision {
        let mode = mode(&settings);
        if mode == "oversized" {
            return GateDecision::Deny("x".repeat(64 << 20));
        }
        match misbehave(&mode) {
            Some(PlanDecision::Deny(reasons)) => GateDecision::Deny(reasons.join("; ")),
            _ => GateDecision::Allow,
        }
    }
}

export_policy!(Hostile);
